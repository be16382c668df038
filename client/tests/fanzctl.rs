//! `fanzctl` as scripts use it, against a real `fanz-node` process: output, `--json`,
//! settings from flags, the environment and a config file, and the exit codes.
//!
//! The node binary is the workspace's own `target/.../fanz-node`, built by
//! `cargo test --workspace` (the README's test command).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "fanzctl-test-token";

fn sibling(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_fanzctl")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace), which build it",
        path.display()
    );
    path
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Node {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node() -> Node {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (http, admin) = (free_addr(), free_addr());
        let mut child = Command::new(sibling("fanz-node"))
            .args([
                "--http-addr",
                &http.to_string(),
                "--admin-addr",
                &admin.to_string(),
            ])
            .args([
                "--h3-addr",
                "off",
                "--resp-addr",
                "off",
                "--admin-token",
                TOKEN,
                "--log-level",
                "warn",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break; // a port collision: try other ports
            }
            if std::net::TcpStream::connect(admin).is_ok()
                && std::net::TcpStream::connect(http).is_ok()
            {
                return Node {
                    child,
                    http,
                    admin,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("fanz-node did not start");
}

fn fanzctl<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanzctl"))
        .args(args)
        .env_remove("FANZ_ENDPOINT")
        .env_remove("FANZ_ADMIN_TOKEN")
        .env("FANZ_CONFIG", "/nonexistent")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn put_get_purge_and_del_with_exit_codes_scripts_can_rely_on() {
    let node = start_node();
    let endpoint = format!("http://{}", node.admin);
    let base = ["--endpoint", endpoint.as_str(), "--token", TOKEN];
    let with =
        |more: &[&str]| -> Vec<String> { base.iter().chain(more).map(|s| s.to_string()).collect() };

    let put = fanzctl(
        &with(&[
            "put",
            "greeting",
            "hello",
            "--tag",
            "greetings",
            "--ttl",
            "60",
        ]),
        &[],
    );
    assert_eq!(put.status.code(), Some(0), "{put:?}");
    let get = fanzctl(&with(&["get", "greeting"]), &[]);
    assert_eq!(get.status.code(), Some(0));
    assert_eq!(stdout(&get).trim(), "hello");

    let json = fanzctl(&with(&["--json", "get", "greeting"]), &[]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["value"], "hello");
    assert_eq!(value["tags"], serde_json::json!(["greetings"]));

    let purge = fanzctl(&with(&["--json", "purge", "--tag", "greetings"]), &[]);
    assert_eq!(purge.status.code(), Some(0), "{purge:?}");
    let report: serde_json::Value = serde_json::from_slice(&purge.stdout).unwrap();
    assert_eq!(report["status"], "ok");
    let gone = fanzctl(&with(&["get", "greeting"]), &[]);
    assert_eq!(gone.status.code(), Some(1), "not found is exit 1");

    assert_eq!(
        fanzctl(&with(&["put", "k", "v"]), &[]).status.code(),
        Some(0)
    );
    assert_eq!(fanzctl(&with(&["del", "k"]), &[]).status.code(), Some(0));
    assert_eq!(fanzctl(&with(&["get", "k"]), &[]).status.code(), Some(1));

    // Cached HTTP objects: by host, by URL prefix, all of them (issue 20).
    let purged = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json", "purge"];
        all.extend(args);
        let out = fanzctl(&with(&all), &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["purged"].clone()
    };
    assert_eq!(
        purged(&["--host", "a.example"])["url_prefixes"],
        serde_json::json!(["http://a.example/", "https://a.example/"])
    );
    assert_eq!(
        purged(&["--url-prefix", "https://a.example/img/"])["url_prefixes"],
        serde_json::json!(["https://a.example/img/"])
    );
    assert_eq!(purged(&["--all"])["all"], true);
    // A URL prefix without a scheme: the node refuses it as bad input (exit 2).
    let refused = fanzctl(&with(&["purge", "--url-prefix", "a.example/img/"]), &[]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("scheme"),
        "{refused:?}"
    );

    // Bad input is exit 2, before anything is sent.
    assert_eq!(fanzctl(&with(&["purge"]), &[]).status.code(), Some(2));
    assert_eq!(
        fanzctl(&with(&["put", "k", "v", "--ttl", "soon"]), &[])
            .status
            .code(),
        Some(2)
    );
    let long_key = "k".repeat(9000);
    assert_eq!(
        fanzctl(&with(&["get", &long_key]), &[]).status.code(),
        Some(2)
    );
    let _ = node.http;
}

#[test]
fn members_ring_stats_and_health_read_the_node() {
    let node = start_node();
    let endpoint = format!("http://{}", node.admin);
    // Endpoint and token from the environment this time.
    let env = [
        ("FANZ_ENDPOINT", endpoint.as_str()),
        ("FANZ_ADMIN_TOKEN", TOKEN),
    ];
    let members = fanzctl(&["--json", "members"], &env);
    assert_eq!(members.status.code(), Some(0), "{members:?}");
    let list: serde_json::Value = serde_json::from_slice(&members.stdout).unwrap();
    assert_eq!(list[0]["http"], node.http.to_string());
    assert_eq!(list[0]["state"], "alive");

    let ring = fanzctl(&["--json", "ring", "--key", "any"], &env);
    let owners: serde_json::Value = serde_json::from_slice(&ring.stdout).unwrap();
    assert_eq!(owners["owners"].as_array().unwrap().len(), 1);

    let stats = fanzctl(&["--json", "stats"], &env);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(
        stats
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("fanz_")),
        "{stats}"
    );

    let health = fanzctl(&["health"], &env);
    assert_eq!(health.status.code(), Some(0));
    assert_eq!(stdout(&health).trim(), "live: true, ready: true");

    // The preStop hook: drained, the node is alive but not ready, and still serves.
    assert_eq!(
        fanzctl(&["drain"], &[("FANZ_ENDPOINT", endpoint.as_str())])
            .status
            .code(),
        Some(4),
        "draining needs the token"
    );
    let drain = fanzctl(&["--json", "drain"], &env);
    assert_eq!(drain.status.code(), Some(0), "{drain:?}");
    let drained: serde_json::Value = serde_json::from_slice(&drain.stdout).unwrap();
    assert_eq!(drained["draining"], true);
    let health = fanzctl(&["health"], &env);
    assert_eq!(health.status.code(), Some(5));
    assert_eq!(stdout(&health).trim(), "live: true, ready: false");
    let put = fanzctl(&["put", "after-drain", "still served"], &env);
    assert_eq!(put.status.code(), Some(0), "{put:?}");
}

#[test]
fn settings_come_from_a_config_file_and_failures_have_their_own_codes() {
    let node = start_node();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fanzctl.conf");
    std::fs::write(
        &config,
        format!(
            "# fanzctl settings\nendpoint = http://{}\ntoken = \"{TOKEN}\"\n",
            node.admin
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    assert_eq!(
        fanzctl(&["--config", config, "health"], &[]).status.code(),
        Some(0)
    );

    // A wrong token: 4, with a message, and at once.
    let started = Instant::now();
    let denied = fanzctl(&["--config", config, "--token", "wrong", "members"], &[]);
    assert_eq!(denied.status.code(), Some(4), "{denied:?}");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("not authorised"));
    assert!(started.elapsed() < Duration::from_secs(3));

    // Nobody listening: 3.
    let closed = free_addr();
    let down = fanzctl(
        &[
            "--endpoint",
            &format!("http://{closed}"),
            "--timeout",
            "1",
            "members",
        ],
        &[],
    );
    assert_eq!(down.status.code(), Some(3), "{down:?}");

    // No endpoint anywhere: 2.
    assert_eq!(fanzctl(&["members"], &[]).status.code(), Some(2));
}
