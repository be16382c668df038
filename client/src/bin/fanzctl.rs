//! `fanzctl`: the operator's tool. Purges, membership, the ring, stats, health, and
//! KV get/put/del against a FANZ Edge cluster, through any node's admin API.
//!
//! Endpoint and token come from `--endpoint`/`--token`, else `FANZ_ENDPOINT` /
//! `FANZ_ADMIN_TOKEN`, else a config file (`--config`, `FANZ_CONFIG`, or
//! `~/.config/fanz/fanzctl.conf`) of `endpoint = ...` and `token = ...` lines.
//!
//! Exit codes: 0 done; 1 not found (`get`); 2 usage, configuration or bad input;
//! 3 no node reachable or timed out; 4 token refused; 5 a node failed the request;
//! 6 a purge or delete was made but not yet applied by every member (they are named).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use fanz_client::{Client, Error, Purge, SetOptions};

fn cli() -> Command {
    let key = || Arg::new("key").required(true).help("The key");
    Command::new("fanzctl")
        .about("Operate a FANZ Edge cluster through any node's admin API")
        .arg(
            Arg::new("endpoint")
                .long("endpoint")
                .global(true)
                .help("Admin API of any node, e.g. http://127.0.0.1:9091 [env FANZ_ENDPOINT]"),
        )
        .arg(
            Arg::new("token")
                .long("token")
                .global(true)
                .help("Admin token [env FANZ_ADMIN_TOKEN]"),
        )
        .arg(
            Arg::new("config")
                .long("config")
                .global(true)
                .help("Config file with endpoint = and token = lines [env FANZ_CONFIG]"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Machine-readable output"),
        )
        .arg(
            Arg::new("timeout")
                .long("timeout")
                .global(true)
                .default_value("5")
                .help("Seconds per request"),
        )
        .subcommand_required(true)
        .subcommand(
            Command::new("purge")
                .about("Purge tags, keys, key prefixes, and cached HTTP objects by URL, host, URL prefix or all")
                .arg(Arg::new("tag").long("tag").action(ArgAction::Append))
                .arg(Arg::new("key").long("key").action(ArgAction::Append))
                .arg(
                    Arg::new("prefix")
                        .long("prefix")
                        .action(ArgAction::Append)
                        .help("Key prefix (\"\": every KV key)"),
                )
                .arg(
                    Arg::new("url")
                        .long("url")
                        .action(ArgAction::Append)
                        .help("Absolute URL of a cached HTTP object"),
                )
                .arg(
                    Arg::new("host")
                        .long("host")
                        .action(ArgAction::Append)
                        .help("Every cached HTTP object of this host"),
                )
                .arg(
                    Arg::new("url-prefix")
                        .long("url-prefix")
                        .action(ArgAction::Append)
                        .help("Every cached HTTP object under this absolute URL prefix"),
                )
                .arg(
                    Arg::new("all")
                        .long("all")
                        .action(ArgAction::SetTrue)
                        .help("Every cached HTTP object"),
                )
                .arg(
                    Arg::new("soft")
                        .long("soft")
                        .action(ArgAction::SetTrue)
                        .help("Mark stale instead of removing"),
                )
                .arg(
                    Arg::new("no-wait")
                        .long("no-wait")
                        .action(ArgAction::SetTrue)
                        .help("Return once durable on one node, without waiting for every member"),
                ),
        )
        .subcommand(Command::new("members").about("List the members and their state"))
        .subcommand(
            Command::new("ring")
                .about("Each member's share of the keys, or the owners of --key")
                .arg(Arg::new("key").long("key")),
        )
        .subcommand(Command::new("stats").about("The node's main counters (from /metrics)"))
        .subcommand(Command::new("health").about("Liveness and readiness of the endpoint's node"))
        .subcommand(Command::new("drain").about(
            "Drain the endpoint's node before stopping it (a Kubernetes preStop hook): not ready, out of the cluster, still serving",
        ))
        .subcommand(Command::new("get").about("Print a value").arg(key()))
        .subcommand(
            Command::new("put")
                .about("Store a value")
                .arg(key())
                .arg(Arg::new("value").required(true))
                .arg(Arg::new("ttl").long("ttl").help("Seconds"))
                .arg(Arg::new("tag").long("tag").action(ArgAction::Append)),
        )
        .subcommand(
            Command::new("del")
                .about("Delete a key everywhere")
                .arg(key()),
        )
}

/// Exit codes scripts can rely on.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Unreachable(_) | Error::Timeout(_) => 3,
        Error::Auth(_) => 4,
        Error::Server { .. } | Error::Protocol { .. } => 5,
        Error::TooLarge { .. } | Error::Invalid(_) | Error::Config(_) | Error::Producer(_) => 2,
        // Made, but not yet applied everywhere: scripts must not take it as done.
        Error::PurgeIncomplete { .. } => 6,
    }
}

/// `endpoint` and `token` from flags, then the environment, then the config file.
fn settings(m: &ArgMatches) -> Result<(String, Option<String>), String> {
    let file = m
        .get_one::<String>("config")
        .cloned()
        .or_else(|| std::env::var("FANZ_CONFIG").ok())
        .or_else(|| {
            std::env::var("HOME")
                .ok()
                .map(|h| format!("{h}/.config/fanz/fanzctl.conf"))
        });
    let mut from_file = std::collections::HashMap::new();
    if let Some(path) = &file {
        if let Ok(text) = std::fs::read_to_string(path) {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| format!("{path}:{}: expected `name = value`", n + 1))?;
                from_file.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
            }
        }
    }
    let pick = |flag: &str, env: &str| {
        m.get_one::<String>(flag)
            .cloned()
            .or_else(|| std::env::var(env).ok())
            .or_else(|| from_file.get(flag).cloned())
    };
    let endpoint = pick("endpoint", "FANZ_ENDPOINT")
        .ok_or("no endpoint: pass --endpoint, set FANZ_ENDPOINT or a config file")?;
    Ok((endpoint, pick("token", "FANZ_ADMIN_TOKEN")))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let m = cli().get_matches();
    let json = m.get_flag("json");
    let (endpoint, token) = match settings(&m) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fanzctl: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(timeout) = m
        .get_one::<String>("timeout")
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| *t > 0.0 && *t < 3600.0)
    else {
        eprintln!("fanzctl: --timeout must be a number of seconds between 0 and 3600");
        return ExitCode::from(2);
    };
    let timeout = Duration::from_secs_f64(timeout);
    let mut builder = Client::builder()
        .seeds([endpoint])
        .timeout(timeout)
        .connect_timeout(timeout);
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let result = async {
        let client = builder.build().await?;
        run(&client, &m, json).await
    }
    .await;
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "retryable": e.is_retryable()})
                );
            } else {
                eprintln!("fanzctl: {e}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn strings(m: &ArgMatches, name: &str) -> Vec<String> {
    m.get_many::<String>(name)
        .map(|v| v.cloned().collect())
        .unwrap_or_default()
}

async fn run(client: &Client, m: &ArgMatches, json: bool) -> Result<u8, Error> {
    match m.subcommand() {
        Some(("purge", p)) => {
            let purge = Purge {
                tags: strings(p, "tag"),
                keys: strings(p, "key"),
                prefixes: strings(p, "prefix"),
                urls: strings(p, "url"),
                hosts: strings(p, "host"),
                url_prefixes: strings(p, "url-prefix"),
                all: p.get_flag("all"),
                soft: p.get_flag("soft"),
                wait: !p.get_flag("no-wait"),
            };
            if purge.is_empty() {
                return Err(Error::Invalid(
                    "nothing to purge: give --tag, --key, --prefix, --url, --host, --url-prefix or --all"
                        .into(),
                ));
            }
            let report = client.purge(&purge).await?;
            if json {
                println!("{}", report.raw);
            } else {
                println!(
                    "purged; {} dependent keys invalidated",
                    report.dependents_invalidated
                );
                if let Some(cluster) = report.raw.get("cluster") {
                    println!("cluster: {cluster}");
                }
            }
        }
        Some(("members", _)) => {
            let members = client.members().await?;
            if json {
                let list: Vec<_> = members.iter().map(|m| serde_json::json!({"id": m.id, "http": m.http, "state": m.state, "zone": m.zone, "weight": m.weight})).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<24} {:<8} {:<22} {:<10} weight",
                    "id", "state", "http", "zone"
                );
                for m in members {
                    println!(
                        "{:<24} {:<8} {:<22} {:<10} {}",
                        m.id, m.state, m.http, m.zone, m.weight
                    );
                }
            }
        }
        Some(("ring", r)) => {
            let topology = client.refresh().await?;
            match r.get_one::<String>("key") {
                Some(key) => {
                    let owners: Vec<String> =
                        client.owners(key).into_iter().map(|m| m.id).collect();
                    if json {
                        println!("{}", serde_json::json!({"key": key, "owners": owners}));
                    } else {
                        println!("{key}: {}", owners.join(", "));
                    }
                }
                None => {
                    let shares = topology.shares();
                    if json {
                        let map: serde_json::Map<_, _> = shares
                            .iter()
                            .map(|(id, s)| (id.clone(), serde_json::json!(s)))
                            .collect();
                        println!(
                            "{}",
                            serde_json::json!({"replicas": topology.report.replicas, "shares": map})
                        );
                    } else {
                        println!("replicas per key: {}", topology.report.replicas);
                        for (id, share) in shares {
                            println!("{id:<24} {:>6.2}%", share * 100.0);
                        }
                    }
                }
            }
        }
        Some(("stats", _)) => {
            let text = client.admin_get("/metrics").await?;
            let text = String::from_utf8_lossy(&text);
            let samples: Vec<(&str, &str)> = text
                .lines()
                .filter(|l| l.starts_with("fanz_") && !l.contains("_bucket{"))
                .filter_map(|l| l.rsplit_once(' '))
                .collect();
            if json {
                let map: serde_json::Map<_, _> = samples
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            serde_json::json!(v.parse::<f64>().unwrap_or(f64::NAN)),
                        )
                    })
                    .collect();
                println!("{}", serde_json::Value::Object(map));
            } else {
                for (k, v) in samples {
                    println!("{k} {v}");
                }
            }
        }
        Some(("health", _)) => {
            let live = client.admin_get("/healthz").await.is_ok();
            let ready = client.admin_get("/readyz").await.is_ok();
            if json {
                println!("{}", serde_json::json!({"live": live, "ready": ready}));
            } else {
                println!("live: {live}, ready: {ready}");
            }
            return Ok(if live && ready { 0 } else { 5 });
        }
        Some(("drain", _)) => {
            let answer = client.drain().await?;
            if json {
                println!("{}", String::from_utf8_lossy(&answer).trim_end());
            } else {
                println!("draining: not ready, left the cluster; stop it with SIGTERM");
            }
        }
        Some(("get", g)) => {
            let key = g.get_one::<String>("key").expect("required");
            match client.get_with_meta(key).await? {
                Some(v) if json => println!(
                    "{}",
                    serde_json::json!({"key": key, "value": String::from_utf8_lossy(&v.value), "age_s": v.age.as_secs(), "tags": v.tags, "version": v.version})
                ),
                Some(v) => {
                    use std::io::Write;
                    let _ = std::io::stdout().write_all(&v.value);
                    println!();
                }
                None => {
                    if !json {
                        eprintln!("fanzctl: {key}: not found");
                    } else {
                        println!("{}", serde_json::json!({"key": key, "value": null}));
                    }
                    return Ok(1);
                }
            }
        }
        Some(("put", p)) => {
            let key = p.get_one::<String>("key").expect("required");
            let value = p.get_one::<String>("value").expect("required").clone();
            let mut options = SetOptions::default();
            if let Some(ttl) = p.get_one::<String>("ttl") {
                let secs: u64 = ttl.parse().map_err(|_| {
                    Error::Invalid(format!("--ttl {ttl:?} is not a whole number of seconds"))
                })?;
                options.ttl = Some(Duration::from_secs(secs));
            }
            options.tags = strings(p, "tag");
            client.set(key, value, &options).await?;
            if json {
                println!("{}", serde_json::json!({"key": key, "stored": true}));
            }
        }
        Some(("del", d)) => {
            let key = d.get_one::<String>("key").expect("required");
            client.delete(key).await?;
            if json {
                println!("{}", serde_json::json!({"key": key, "deleted": true}));
            }
        }
        _ => unreachable!("clap requires a known subcommand"),
    }
    Ok(0)
}
