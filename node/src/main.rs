//! `fanz-node`: runs a FANZ Edge node. See `fanz-node --help`.

use std::process::ExitCode;

use fanz_node::cli::{self, CliError, Invocation};
use fanz_node::config::Config;
use fanz_node::node::{self, StartError};

mod allocator;

fn main() -> ExitCode {
    allocator::configure();
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
    let _exporter = fanz_node::logging::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(allocator::on_worker_park)
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
    tokio::spawn(allocator::purge_when_idle());
    let http = node::bind("http_addr", config.http_addr).await?;
    let admin = node::bind("admin_addr", config.admin_addr).await?;
    node::run(config, http, admin, node::shutdown_signal()).await
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
