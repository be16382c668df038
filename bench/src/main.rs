//! `fanz-bench`: load against a URL over HTTP/1.1, HTTP/2 or HTTP/3 (closed or open
//! loop), a test origin, and charts of the results.
//!
//! ```text
//! fanz-bench --protocol h3 --url https://localhost:8443/kv/k --connect 127.0.0.1:8443 \
//!            --ca-cert fanz-data/dev-cert.pem --connections 32 --duration 10
//! fanz-bench --url 'http://127.0.0.1:8080/1k/{key}' --keys 100000 --zipf 1.0 --rate 20000
//! fanz-bench origin --addr 127.0.0.1:8000
//! fanz-bench chart --out hits.svg fanz=fanz.json nginx=nginx.json
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Arg, ArgMatches, Command};
use fanz_bench::chart::{svg, Series};
use fanz_bench::driver::{DriverOptions, Protocol, Target};
use fanz_bench::origin::OriginOptions;
use fanz_bench::run::{run, Outcome, Plan, PurgePlan};
use fanz_bench::workload::{KeyDistribution, Workload};

fn command() -> Command {
    Command::new("fanz-bench")
        .about("Load over HTTP/1.1, HTTP/2 or HTTP/3 (closed loop, or open loop with --rate); prints throughput and latency quantiles")
        .subcommand(
            Command::new("origin")
                .about("Serve test objects: GET /{size}/{name} answers size bytes (1024, 64k, 1m) with Cache-Control, ETag and Surrogate-Key")
                .arg(Arg::new("addr").long("addr").default_value("127.0.0.1:8000").help("Address to listen on"))
                .arg(Arg::new("max-age").long("max-age").default_value("3600").help("Cache-Control max-age, seconds"))
                .arg(Arg::new("default-size").long("default-size").default_value("1024").help("Bytes when the path names no size"))
                .arg(Arg::new("tags").long("tags").default_value("100").help("Distinct Surrogate-Key tags (t0..tN)"))
                .arg(Arg::new("h3-addr").long("h3-addr").help("Also serve HTTP/3 here (UDP), with a self-signed certificate written to --cert-out"))
                .arg(Arg::new("cert-out").long("cert-out").default_value("fanz-bench-origin.pem").help("Where the HTTP/3 certificate goes (PEM), for --ca-cert"))
                .arg(Arg::new("versioned").long("versioned").num_args(0).action(clap::ArgAction::SetTrue).help("Pages with generations: POST /_publish/{path} makes the next; GET answers '{path} g{N}' tagged with the path's last segment")),
        )
        .subcommand(
            Command::new("chart")
                .about("Draw the latency percentiles of runs saved with --json as one SVG")
                .arg(Arg::new("out").long("out").required(true).help("SVG file to write"))
                .arg(Arg::new("title").long("title").default_value("Latency percentiles").help("Chart title"))
                .arg(Arg::new("runs").num_args(1..).required(true).help("LABEL=FILE.json for each run")),
        )
        .arg(Arg::new("protocol").long("protocol").default_value("h1").help("h1, h2, h3, or client (fanz-client: --url http://ADMIN_ADDR/{key})"))
        .arg(Arg::new("url").long("url").help("http://host:port/path (h1, h2), https://host:port/path (h1 and h2 over TLS, h3); {key} in the path is replaced by a key"))
        .arg(Arg::new("connect").long("connect").help("Address to connect to, if not the URL's host:port"))
        .arg(Arg::new("ca-cert").long("ca-cert").help("PEM certificate to trust (HTTP/3, https:// URLs)"))
        .arg(Arg::new("connections").long("connections").default_value("32").help("Concurrent connections, one request in flight each"))
        .arg(Arg::new("duration").long("duration").default_value("10").help("Measured seconds"))
        .arg(Arg::new("warmup").long("warmup").default_value("2").help("Unmeasured seconds first"))
        .arg(Arg::new("rate").long("rate").help("Open loop: requests per second in total, latency from the intended send time"))
        .arg(Arg::new("keys").long("keys").default_value("1").help("Distinct keys substituted for {key}"))
        .arg(Arg::new("zipf").long("zipf").default_value("0").help("Zipf exponent of the key popularity (0: uniform)"))
        .arg(Arg::new("writes").long("writes").default_value("0").help("Fraction of requests that are PUTs (KV writes), 0 to 1"))
        .arg(Arg::new("tracking-params").long("tracking-params").default_value("0").help("Fraction of reads, 0 to 1, with random utm_source/utm_campaign parameters (query normalisation workloads)"))
        .arg(Arg::new("sequential").long("sequential").num_args(0).help("Keys in order (k0, k1, ...) instead of drawn: with --writes 1, a fill"))
        .arg(Arg::new("value-size").long("value-size").default_value("1024").help("Bytes per written value"))
        .arg(Arg::new("seed").long("seed").default_value("1").help("Seed of the request sequence"))
        .arg(Arg::new("purge-rate").long("purge-rate").help("Also POST tag purges to --admin at this many per second"))
        .arg(Arg::new("purge-connections").long("purge-connections").help("Concurrent purgers (with --admin): without --purge-rate each posts its next purge as soon as the last is answered, the sustained purge rate; --connections 0 runs only them"))
        .arg(Arg::new("admin").long("admin").help("host:port of the node's admin API (for --purge-rate)"))
        .arg(Arg::new("token").long("token").env("FANZ_ADMIN_TOKEN").hide_env_values(true).help("Admin token for purges"))
        .arg(Arg::new("purge-tags").long("purge-tags").default_value("100").help("Purged tags are drawn from t0..tN"))
        .arg(Arg::new("label").long("label").help("Name of this run in the JSON (for charts)"))
        .arg(Arg::new("quic-mtu").long("quic-mtu").default_value("1452").help("Largest UDP payload QUIC path-MTU discovery may try (HTTP/3)"))
        .arg(Arg::new("json").long("json").num_args(0).help("Print one JSON object instead of a table"))
}

fn number<T: std::str::FromStr>(m: &ArgMatches, name: &str) -> Result<T, String> {
    let v = m.get_one::<String>(name).cloned().unwrap_or_default();
    v.parse::<T>()
        .map_err(|_| format!("--{name}: not a valid number: {v:?}"))
}

fn plan(m: &ArgMatches) -> Result<Plan, String> {
    let get = |name: &str| m.get_one::<String>(name).cloned();
    let protocol: Protocol = get("protocol").unwrap_or_default().parse()?;
    let url: http::Uri = get("url")
        .ok_or("--url is required")?
        .replace("{key}", "%7Bkey%7D")
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
    let positive = |name: &str| -> Result<Option<f64>, String> {
        match get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x > 0.0 && x.is_finite() => Ok(Some(x)),
                _ => Err(format!("--{name} must be a positive number, got {v:?}")),
            },
        }
    };
    let keys = whole("keys")?;
    if keys > 100_000_000 {
        return Err("--keys must be at most 100000000".into());
    }
    let zipf: f64 = number(m, "zipf")?;
    if !(0.0..=5.0).contains(&zipf) {
        return Err("--zipf must be from 0 to 5".into());
    }
    let writes: f64 = number(m, "writes")?;
    if !(0.0..=1.0).contains(&writes) {
        return Err("--writes must be from 0 to 1".into());
    }
    let value_size: usize = number(m, "value-size")?;
    if value_size > 64 << 20 {
        return Err("--value-size must be at most 64 MiB".into());
    }
    let purge_connections = match get("purge-connections") {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Some(n),
            _ => {
                return Err(format!(
                    "--purge-connections must be from 1 to 1024, got {v:?}"
                ))
            }
        },
    };
    let purge_rate = positive("purge-rate")?;
    let purges = match (purge_rate, purge_connections) {
        (None, None) => None,
        (rate, connections) => {
            let admin = get("admin")
                .ok_or("--purge-rate and --purge-connections need --admin host:port")?;
            let admin: SocketAddr = admin
                .to_socket_addrs()
                .map_err(|e| format!("--admin {admin}: {e}"))?
                .next()
                .ok_or("--admin: no address")?;
            Some(PurgePlan {
                admin,
                token: get("token"),
                rate,
                connections: connections.unwrap_or(1),
                tags: whole("purge-tags")?,
            })
        }
    };
    let path = url
        .path_and_query()
        .map_or("/".into(), |p| p.to_string())
        .replace("%7Bkey%7D", "{key}");
    Ok(Plan {
        protocol,
        target: Target {
            addr,
            host: authority.host().to_string(),
            path: path.clone(),
            tls: url.scheme_str() == Some("https")
                && matches!(protocol, Protocol::H1 | Protocol::H2),
        },
        connections: match get("connections").unwrap_or_default().parse::<usize>() {
            Ok(0) if purges.is_none() => {
                return Err("--connections 0 leaves nothing to run without purgers".into())
            }
            Ok(n) if n <= 100_000 => n,
            _ => {
                return Err(
                    "--connections must be a whole number up to 100000 (0: only the purgers)"
                        .into(),
                )
            }
        },
        duration: Duration::from_secs(whole("duration")?),
        warmup: Duration::from_secs(
            get("warmup")
                .unwrap_or_default()
                .parse()
                .map_err(|_| "--warmup must be whole seconds")?,
        ),
        driver: DriverOptions {
            ca_cert: get("ca-cert").map(PathBuf::from),
            max_udp_payload: match get("quic-mtu").unwrap_or_default().parse::<u16>() {
                Ok(n) if n >= 1200 => n,
                _ => return Err("--quic-mtu must be a whole number from 1200 to 65535".into()),
            },
            token: get("token"),
        },
        workload: Workload {
            path,
            keys,
            distribution: KeyDistribution::zipf(keys, zipf),
            writes,
            value: Bytes::from(vec![b'v'; value_size]),
            sequential: m.get_flag("sequential").then(Default::default),
            tracking: match number::<f64>(m, "tracking-params")? {
                f if (0.0..=1.0).contains(&f) => f,
                _ => return Err("--tracking-params must be from 0 to 1".into()),
            },
        },
        rate: positive("rate")?,
        seed: number(m, "seed")?,
        purges,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })
}

fn report(plan: &Plan, o: &Outcome, label: Option<&String>, json: bool) {
    let purges = o.purges.as_ref().map(|p| {
        let h = &p.latency_us;
        serde_json::json!({
            "purges": p.done, "failed": p.failed,
            "per_s": p.done as f64 / o.elapsed.as_secs_f64(),
            "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0, "max_ms": h.max() as f64 / 1000.0,
        })
    });
    if json {
        println!(
            "{}",
            serde_json::json!({
                "label": label, "protocol": format!("{:?}", plan.protocol),
                "loop": if plan.rate.is_some() { "open" } else { "closed" }, "target_rate": plan.rate,
                "requests": o.requests, "errors": o.errors,
                "req_per_s": o.rate(), "p50_ms": o.ms(0.5), "p90_ms": o.ms(0.9), "p99_ms": o.ms(0.99),
                "p999_ms": o.ms(0.999), "max_ms": o.latency_us.max() as f64 / 1000.0, "bytes": o.bytes,
                "purge": purges,
            })
        );
        return;
    }
    println!("protocol  loop    req/s       p50 ms  p90 ms  p99 ms  p99.9 ms  max ms  errors");
    println!(
        "{:<9} {:<7} {:<11.0} {:<7.3} {:<7.3} {:<7.3} {:<9.3} {:<7.3} {}",
        format!("{:?}", plan.protocol),
        if plan.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        o.rate(),
        o.ms(0.5),
        o.ms(0.9),
        o.ms(0.99),
        o.ms(0.999),
        o.latency_us.max() as f64 / 1000.0,
        o.errors
    );
    if let Some(p) = purges {
        println!("purges: {p}");
    }
}

fn chart(m: &ArgMatches) -> Result<(), String> {
    let mut series = Vec::new();
    for spec in m.get_many::<String>("runs").into_iter().flatten() {
        let (label, file) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: expected LABEL=FILE.json"))?;
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let run = serde_json::from_str(text.trim()).map_err(|e| format!("{file}: {e}"))?;
        series.push(Series {
            label: label.to_string(),
            run,
        });
    }
    let title = m.get_one::<String>("title").cloned().unwrap_or_default();
    let out = m.get_one::<String>("out").cloned().unwrap_or_default();
    std::fs::write(&out, svg(&title, &series)?).map_err(|e| format!("{out}: {e}"))
}

fn origin_options(m: &ArgMatches) -> Result<(SocketAddr, OriginOptions), String> {
    let addr: SocketAddr = number(m, "addr")?;
    let options = OriginOptions {
        max_age: number(m, "max-age")?,
        default_size: number(m, "default-size")?,
        tags: number(m, "tags")?,
        versioned: m.get_flag("versioned"),
        ..OriginOptions::default()
    };
    if options.default_size > options.max_size {
        return Err("--default-size must be at most 64 MiB".into());
    }
    Ok((addr, options))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("fanz-bench: {e}");
            ExitCode::from(1)
        })
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    match matches.subcommand() {
        Some(("chart", m)) => {
            return match chart(m) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fanz-bench chart: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(("origin", m)) => {
            let (addr, options) = match origin_options(m) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("fanz-bench origin: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let h3 = match m
                .get_one::<String>("h3-addr")
                .map(|a| a.parse::<SocketAddr>())
            {
                None => None,
                Some(Ok(a)) => Some((
                    a,
                    PathBuf::from(m.get_one::<String>("cert-out").expect("default")),
                )),
                Some(Err(e)) => {
                    eprintln!("fanz-bench origin: --h3-addr: {e}");
                    return ExitCode::from(2);
                }
            };
            let served = rt.block_on(async move {
                if let Some((h3_addr, cert_out)) = h3 {
                    let options = options.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            fanz_bench::origin::serve_h3(h3_addr, &cert_out, options).await
                        {
                            eprintln!("fanz-bench origin: HTTP/3: {e:#}");
                        }
                    });
                }
                fanz_bench::origin::run(addr, options).await
            });
            return match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fanz-bench origin: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    let plan = match plan(&matches) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fanz-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(run(&plan)) {
        Ok(o) => {
            report(
                &plan,
                &o,
                matches.get_one::<String>("label"),
                matches.get_flag("json"),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fanz-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
