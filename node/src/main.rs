//! `fanz-node`: runs a FANZ Edge node. See `fanz-node --help`.

use std::process::ExitCode;

use fanz_node::cli::{self, CliError, Invocation};
use fanz_node::config::{Config, LogFormat};
use fanz_node::node::{self, StartError};
use fanz_node::store::CorruptionLayer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args_os()) {
        Ok(Invocation::Serve(config)) => config,
        Ok(Invocation::PrintConfig(config)) => {
            print!("{}", config.to_toml());
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::PrintDevCert(config)) => return print_dev_cert(&config),
        Ok(Invocation::ClusterInit { dir, nodes }) => return cluster_init(&dir, nodes),
        Err(CliError::Usage(e)) => e.exit(),
        Err(CliError::Config(e)) => {
            eprintln!("fanz-node: {e}");
            return ExitCode::from(2);
        }
    };
    // Flushes exported spans when `main` returns.
    let _exporter = init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanz-node: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("fanz-node: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn print_dev_cert(config: &Config) -> ExitCode {
    let made = std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            fanz_node::tls::dev_certificate(&config.data_dir).map_err(|e| e.to_string())
        });
    match made.and_then(|(cert, _)| {
        let pem = std::fs::read_to_string(&cert).map_err(|e| e.to_string())?;
        let fingerprint = fanz_node::tls::fingerprint(&cert).map_err(|e| e.to_string())?;
        Ok((pem, fingerprint))
    }) {
        Ok((pem, fingerprint)) => {
            eprintln!("SHA-256 fingerprint: {fingerprint}");
            print!("{pem}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fanz-node: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config) -> Result<(), StartError> {
    let http = node::bind("http_addr", config.http_addr).await?;
    let admin = node::bind("admin_addr", config.admin_addr).await?;
    node::run(config, http, admin, node::shutdown_signal()).await
}

/// What `init_logging` leaves running: the span exporter, with the `otlp` feature.
#[cfg(feature = "otlp")]
type Exporter = Option<fanz_node::otlp::Exporter>;
#[cfg(not(feature = "otlp"))]
type Exporter = Option<std::convert::Infallible>;

fn init_logging(config: &Config) -> Exporter {
    // Validated when the config was parsed.
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // A reload may change the level (`log_level`); the new filter was validated
    // when the reloaded config resolved.
    let (filter, level) = tracing_subscriber::reload::Layer::new(filter);
    fanz_node::reload::set_log_level_hook(move |directives| {
        let new = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        level.reload(new).map_err(|e| e.to_string())
    });
    // The corruption counter sees foyer's warnings whatever the log level is.
    let corruption = CorruptionLayer
        .with_filter(Targets::new().with_target("foyer_storage", tracing::Level::WARN));
    let registry = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(corruption);
    #[cfg(feature = "otlp")]
    {
        let node_id = config.cluster.node_id.as_deref().unwrap_or("local");
        match config
            .otlp_endpoint
            .as_deref()
            .map(|e| fanz_node::otlp::layer(e, node_id))
        {
            Some(Ok((layer, exporter))) => {
                // Request spans and what they cause, not the dependencies' spans.
                let ours = Targets::new().with_target("fanz_node", tracing::Level::INFO);
                registry.with(layer.with_filter(ours)).init();
                Some(exporter)
            }
            Some(Err(e)) => {
                registry.init();
                tracing::error!(error = %e, "span export is off");
                None
            }
            None => {
                registry.init();
                None
            }
        }
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.init();
        None
    }
}

fn cluster_init(dir: &std::path::Path, nodes: usize) -> ExitCode {
    match fanz_node::cluster::pki::cluster_init(dir, nodes) {
        Ok(made) => {
            println!("cluster CA and keyring in {}", dir.display());
            for d in made {
                println!("  --cluster-dir {}", d.display());
            }
            println!(
                "keep {} offline: it signs new nodes",
                dir.join("ca-key.pem").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fanz-node cluster-init: {e}");
            ExitCode::from(1)
        }
    }
}
