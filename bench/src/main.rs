//! `fanz-bench`: closed-loop load against a URL over HTTP/1.1, HTTP/2 or HTTP/3.
//!
//! ```text
//! fanz-bench --protocol h3 --url https://localhost:8443/kv/k --connect 127.0.0.1:8443 \
//!            --ca-cert fanz-data/dev-cert.pem --connections 32 --duration 10s
//! ```

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, Command};
use fanz_bench::driver::{Protocol, QuicOptions, Target};
use fanz_bench::run::{run, Plan};

fn command() -> Command {
    Command::new("fanz-bench")
        .about("Closed-loop load over HTTP/1.1, HTTP/2 or HTTP/3; prints throughput and latency quantiles")
        .arg(Arg::new("protocol").long("protocol").default_value("h1").help("h1, h2 or h3"))
        .arg(Arg::new("url").long("url").required(true).help("http://host:port/path (h1, h2) or https://host:port/path (h3)"))
        .arg(Arg::new("connect").long("connect").help("Address to connect to, if not the URL's host:port"))
        .arg(Arg::new("ca-cert").long("ca-cert").help("PEM certificate to trust (HTTP/3)"))
        .arg(Arg::new("connections").long("connections").default_value("32").help("Concurrent connections, one request in flight each"))
        .arg(Arg::new("duration").long("duration").default_value("10").help("Measured seconds"))
        .arg(Arg::new("warmup").long("warmup").default_value("2").help("Unmeasured seconds first"))
        .arg(Arg::new("quic-mtu").long("quic-mtu").default_value("1452").help("Largest UDP payload QUIC path-MTU discovery may try (HTTP/3)"))
        .arg(Arg::new("json").long("json").num_args(0).help("Print one JSON object instead of a table"))
}

fn plan(m: &clap::ArgMatches) -> Result<Plan, String> {
    let get = |name: &str| m.get_one::<String>(name).cloned();
    let protocol: Protocol = get("protocol").unwrap_or_default().parse()?;
    let url: http::Uri = get("url")
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("--url: {e}"))?;
    let authority = url.authority().ok_or("--url needs a host")?.clone();
    let connect = get("connect").unwrap_or_else(|| authority.to_string());
    let addr = connect
        .to_socket_addrs()
        .map_err(|e| format!("--connect {connect}: {e}"))?
        .next()
        .ok_or(format!("--connect {connect}: no address"))?;
    let whole = |name: &str| -> Result<u64, String> {
        let v = get(name).unwrap_or_default();
        match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "--{name} must be a positive whole number, got {v:?}"
            )),
        }
    };
    Ok(Plan {
        protocol,
        target: Target {
            addr,
            host: authority.host().to_string(),
            path: url.path_and_query().map_or("/".into(), |p| p.to_string()),
        },
        connections: whole("connections")? as usize,
        duration: Duration::from_secs(whole("duration")?),
        warmup: Duration::from_secs(
            get("warmup")
                .unwrap_or_default()
                .parse()
                .map_err(|_| "--warmup must be whole seconds")?,
        ),
        quic: QuicOptions {
            ca_cert: get("ca-cert").map(PathBuf::from),
            max_udp_payload: match get("quic-mtu").unwrap_or_default().parse::<u16>() {
                Ok(n) if n >= 1200 => n,
                _ => return Err("--quic-mtu must be a whole number from 1200 to 65535".into()),
            },
        },
    })
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let plan = match plan(&matches) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fanz-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanz-bench: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(&plan)) {
        Ok(o) => {
            if matches.get_flag("json") {
                println!(
                    "{}",
                    serde_json::json!({
                        "protocol": format!("{:?}", plan.protocol), "requests": o.requests, "errors": o.errors,
                        "req_per_s": o.rate(), "p50_ms": o.ms(0.5), "p90_ms": o.ms(0.9), "p99_ms": o.ms(0.99),
                        "p999_ms": o.ms(0.999), "max_ms": o.latency_us.max() as f64 / 1000.0, "bytes": o.bytes,
                    })
                );
            } else {
                println!("protocol  req/s       p50 ms  p90 ms  p99 ms  p99.9 ms  max ms  errors");
                println!(
                    "{:<9} {:<11.0} {:<7.3} {:<7.3} {:<7.3} {:<9.3} {:<7.3} {}",
                    format!("{:?}", plan.protocol),
                    o.rate(),
                    o.ms(0.5),
                    o.ms(0.9),
                    o.ms(0.99),
                    o.ms(0.999),
                    o.latency_us.max() as f64 / 1000.0,
                    o.errors
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fanz-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
