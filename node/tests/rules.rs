//! The operator's `[[rules]]` (issue 20, part 2) against a real node: query
//! normalisation in the cache key and the origin request, bypass, purging a URL
//! through the key its rule makes, validation at start-up, and live reloads that
//! keep the old rules when the new ones are bad.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::origin::{numbered_origin, respond, TestOrigin};
use common::*;
use http::{Method, StatusCode};

const RULES: &str = r#"
[[rules]]
path = "/api/*"
bypass = true

[[rules]]
host = "shop.example"
query = "sort"
drop_params = ["utm_*", "fbclid"]
"#;

fn write_config(path: &Path, origin: &TestOrigin, rules: &str) {
    std::fs::write(
        path,
        format!(
            "admin_token = \"{TOKEN}\"\norigin = \"{}\"\n{rules}",
            origin.url()
        ),
    )
    .unwrap();
}

/// A node started from a config file holding the admin token, `origin` and `rules`;
/// the file's path too, for reloads.
fn node_with_rules(
    tmp: &tempfile::TempDir,
    data: &Path,
    origin: &TestOrigin,
    rules: &str,
) -> (std::path::PathBuf, TestNode) {
    let file = tmp.path().join("fanz.toml");
    write_config(&file, origin, rules);
    let node = TestNode::start_with(data, vec!["--config".into(), file.display().to_string()]);
    (file, node)
}

/// An origin that says which path and query it was asked for, and how often.
async fn origin() -> TestOrigin {
    numbered_origin().await
}

async fn get_at(node: &TestNode, host: &str, path: &str) -> Reply {
    let r = request(node, Method::GET, path, &[("host", host)], "").await;
    assert_eq!(r.status, StatusCode::OK, "{host}{path}: {}", r.text());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_normalise_the_query_bypass_and_purge_through_the_key_they_make() {
    let (tmp, data) = data_dir();
    let origin = origin().await;
    let (file, node) = node_with_rules(&tmp, &data, &origin, RULES);

    // Parameter order and tracking parameters no longer split the cache, and the
    // origin is asked for the normalised URL.
    let first = get_at(&node, "shop.example", "/p?b=2&utm_source=x&a=1").await;
    assert_eq!(first.text(), "/p?a=1&b=2 #1");
    for variant in [
        "/p?a=1&b=2&fbclid=z",
        "/p?utm_medium=y&b=2&a=1",
        "/p?a=1&b=2",
    ] {
        let r = get_at(&node, "shop.example", variant).await;
        assert_eq!(r.text(), "/p?a=1&b=2 #1", "{variant}");
        assert!(
            r.header("cache-status").unwrap().starts_with("fanz; hit"),
            "{variant}"
        );
    }
    // Another host has no such rule: the query is the client's.
    assert_eq!(
        get_at(&node, "other.example", "/p?b=2&a=1").await.text(),
        "/p?b=2&a=1 #1"
    );
    assert_eq!(
        get_at(&node, "other.example", "/p?a=1&b=2").await.text(),
        "/p?a=1&b=2 #2"
    );

    // Bypass: never stored, and says why.
    for n in 1..=2 {
        let r = get_at(&node, "shop.example", "/api/x").await;
        assert_eq!(r.text(), format!("/api/x #{n}"));
        assert_eq!(
            r.header("cache-status").unwrap(),
            "fanz; fwd=bypass; detail=rule"
        );
    }

    // Purging a URL purges the key its rule maps it to.
    let r = admin_purge(
        &node,
        r#"{"urls":["http://shop.example/p?utm_source=q&b=2&a=1"]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        get_at(&node, "shop.example", "/p?a=1&b=2").await.text(),
        "/p?a=1&b=2 #3",
        "still the purged copy"
    );

    // print-config shows the rules as resolved.
    let out = std::process::Command::new(binary())
        .args(["print-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            r#"{ host = "shop.example", query = "sort", drop_params = ["utm_*", "fbclid"] }"#
        ),
        "{text}"
    );
}

#[test]
fn a_bad_rule_stops_start_up_naming_the_rule_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("fanz.toml");
    for (rules, named) in [
        ("[[rules]]\nhots = \"a.example\"\n", "rules[0].hots"),
        (
            "[[rules]]\npath = \"/a\"\n[[rules]]\nquery = \"shuffle\"\n",
            "rules[1].query",
        ),
        (
            "[[rules]]\ndrop_params = [\"utm_ *\"]\n",
            "rules[0].drop_params",
        ),
        (
            "[[rules]]\nremove_response_headers = [\"Content-Length\"]\n",
            "rules[0].remove_response_headers: Content-Length cannot be edited",
        ),
        (
            "[[rules]]\npath = \"/img/*\"\n[[rules]]\npath = \"/img/a/*\"\n",
            "rules[1] can never match",
        ),
    ] {
        std::fs::write(&file, rules).unwrap();
        let out = std::process::Command::new(binary())
            .args(["--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{rules}: {stderr}");
        assert!(stderr.contains(named), "{rules}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_applies_new_rules_and_keeps_the_old_ones_when_a_rule_is_bad() {
    let (tmp, data) = data_dir();
    let origin = origin().await;
    let (file, node) = node_with_rules(&tmp, &data, &origin, "");
    assert_eq!(
        get_at(&node, "a", "/q?x=1&utm_id=2").await.text(),
        "/q?x=1&utm_id=2 #1"
    );

    write_config(&file, &origin, "[[rules]]\ndrop_params = [\"utm_*\"]\n");
    signal(node.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_at(&node, "a", "/q?x=1&utm_id=3").await;
        if r.text().starts_with("/q?x=1 #") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new rule never applied: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bad rule: the reload is rejected and the running rules stay.
    write_config(&file, &origin, "[[rules]]\nquery = \"shuffle\"\n");
    signal(node.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log_text().contains("rules[0].query") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get_at(&node, "a", "/q?x=1&utm_id=4").await;
    assert!(
        r.text().starts_with("/q?x=1 #"),
        "the old rule was dropped: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rule_lifetimes_replace_the_origins_and_keep_errors_briefly() {
    let (tmp, data) = data_dir();
    let origin = TestOrigin::start(|req, n| {
        let body = format!("{} #{n}", req.path);
        match req.path.as_str() {
            "/no-store" => respond(200, &[("cache-control", "no-store")], body),
            "/short" => respond(200, &[("cache-control", "max-age=1")], body),
            "/private" => respond(200, &[("cache-control", "private")], body),
            "/missing" => respond(404, &[], body),
            "/broken" => respond(500, &[], body),
            _ => respond(200, &[], body),
        }
    })
    .await;
    let (_, node) = node_with_rules(
        &tmp,
        &data,
        &origin,
        r#"
[[rules]]
ttl = "90s"
ttl_by_status = { 404 = "30s", "5xx" = "5s" }
"#,
    );
    let twice = async |path: &str| {
        let first = request(&node, Method::GET, path, &[("host", "a")], "").await;
        let second = request(&node, Method::GET, path, &[("host", "a")], "").await;
        (first, second)
    };
    let ttl_of = |r: &Reply| -> i64 {
        let status = r.header("cache-status").unwrap_or_default();
        assert!(status.starts_with("fanz; hit"), "{status}");
        status
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ttl in {status}"))
    };
    // The rule's ttl replaces the origin's no-store and max-age.
    for path in ["/no-store", "/short"] {
        let (first, second) = twice(path).await;
        assert_eq!(first.text(), second.text(), "{path}");
        assert!((85..=90).contains(&ttl_of(&second)), "{path}");
    }
    // Negative caching by status: an exact code, and a class.
    let (first, second) = twice("/missing").await;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    assert_eq!(first.text(), second.text());
    assert!((25..=30).contains(&ttl_of(&second)));
    let (first, second) = twice("/broken").await;
    assert_eq!(second.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.text(), second.text());
    assert!((0..=5).contains(&ttl_of(&second)));
    // A private response stays private whatever the rule.
    let (first, second) = twice("/private").await;
    assert_ne!(first.text(), second.text(), "a private response was shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_edit_the_headers_clients_get_and_the_origin_is_asked_with() {
    let (tmp, data) = data_dir();
    let origin = TestOrigin::start(|req, n| {
        let seen = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        respond(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "session=abc"),
                ("x-powered-by", "php"),
            ],
            format!("cookie={} x-edge={} #{n}", seen("cookie"), seen("x-edge")),
        )
    })
    .await;
    let (_, node) = node_with_rules(
        &tmp,
        &data,
        &origin,
        r#"
[[rules]]
path = "/static/*"
set_response_headers = { "Access-Control-Allow-Origin" = "*" }
remove_response_headers = ["Set-Cookie", "X-Powered-By"]
set_request_headers = { "X-Edge" = "fanz" }
remove_request_headers = ["Cookie"]
"#,
    );
    let with_cookie = async |path: &str| {
        request(
            &node,
            Method::GET,
            path,
            &[("host", "a"), ("cookie", "user=1")],
            "",
        )
        .await
    };
    for round in 0..2 {
        let r = with_cookie("/static/app.js").await;
        assert_eq!(r.text(), "cookie=- x-edge=fanz #1", "round {round}");
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some("*")
        );
        assert_eq!(r.header("set-cookie"), None, "round {round}");
        assert_eq!(r.header("x-powered-by"), None, "round {round}");
    }
    // Outside the rule: as the origin sent it.
    let r = with_cookie("/other").await;
    assert_eq!(r.text(), "cookie=user=1 x-edge=- #1");
    assert_eq!(r.header("x-powered-by").as_deref(), Some("php"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rule_sends_its_requests_to_its_own_origin() {
    let (tmp, data) = data_dir();
    // Two origins that say who answered.
    let named = |name: &'static str| {
        TestOrigin::start(move |req, _| {
            respond(
                200,
                &[("cache-control", "max-age=60")],
                format!("{name} {}", req.path),
            )
        })
    };
    let (main, blog) = (named("main").await, named("blog").await);
    let file = tmp.path().join("fanz.toml");
    write_config(
        &file,
        &main,
        &format!(
            "[[rules]]\npath = \"/blog/*\"\norigin = \"{}\"\n",
            blog.url()
        ),
    );
    let node = TestNode::start_with(&data, vec!["--config".into(), file.display().to_string()]);
    assert_eq!(
        get_at(&node, "a", "/blog/post").await.text(),
        "blog /blog/post"
    );
    assert_eq!(get_at(&node, "a", "/shop").await.text(), "main /shop");
    assert_eq!(blog.count("/blog/post"), 1);
    assert_eq!(main.count("/blog/post"), 0);
}

/// `grace` (Varnish's grace): a copy past its freshness is served while the origin
/// answers 5xx, for as long as the rule says; without a rule the failure reaches the
/// client. (An unreachable or timed-out origin takes the same path: the copy's
/// stale-if-error window, which grace lengthens; `origin_failures.rs` covers it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grace_serves_a_stale_copy_while_the_origin_fails() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (tmp, data) = data_dir();
    let failing = std::sync::Arc::new(AtomicBool::new(false));
    let origin = {
        let failing = failing.clone();
        TestOrigin::start(move |req, n| {
            if failing.load(Ordering::SeqCst) {
                respond(503, &[], "down".to_string())
            } else {
                respond(
                    200,
                    &[("cache-control", "max-age=1")],
                    format!("{} #{n}", req.path),
                )
            }
        })
        .await
    };
    let (_, node) = node_with_rules(
        &tmp,
        &data,
        &origin,
        r#"
[[rules]]
host = "graced.example"
grace = "1h"
"#,
    );
    let graced = get_at(&node, "graced.example", "/page").await.text();
    let plain = get_at(&node, "plain.example", "/page").await.text();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    failing.store(true, Ordering::SeqCst);

    // 5xx: the graced copy is served, marked; the other gets the 503.
    let page = async |host: &str| request(&node, Method::GET, "/page", &[("host", host)], "").await;
    let r = page("graced.example").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), graced);
    let status = r.header("cache-status").unwrap_or_default();
    assert!(
        status.contains("fwd-status=503") && status.contains("stale-if-error"),
        "{status}"
    );
    let r = page("plain.example").await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{plain} without grace"
    );
}

/// `key_headers` and `key_cookies`: a request header's or a cookie's value splits
/// the cache as `Vary` would (other cookies do not), and a purge of the URL covers
/// every copy it maps to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_headers_and_cookies_split_the_cache_and_a_url_purge_covers_every_copy() {
    let (tmp, data) = data_dir();
    let origin = origin().await;
    let (_, node) = node_with_rules(
        &tmp,
        &data,
        &origin,
        r#"
[[rules]]
host = "shop.example"
key_headers = ["X-Device"]
key_cookies = ["lang"]
"#,
    );
    let fetch = async |device: &str, cookie: &str| {
        let r = request(
            &node,
            Method::GET,
            "/p",
            &[
                ("host", "shop.example"),
                ("x-device", device),
                ("cookie", cookie),
            ],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        r.text()
    };
    assert_eq!(fetch("mobile", "lang=en; sid=1").await, "/p #1");
    assert_eq!(
        fetch("mobile", "sid=2; lang=en").await,
        "/p #1",
        "other cookies do not count"
    );
    assert_eq!(fetch("desktop", "lang=en").await, "/p #2");
    assert_eq!(fetch("mobile", "lang=fr").await, "/p #3");
    assert_eq!(fetch("desktop", "lang=en; sid=9").await, "/p #2");
    assert_eq!(fetch("mobile", "lang=fr").await, "/p #3");

    let r = admin_purge(&node, r#"{"urls":["http://shop.example/p"]}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut after = vec![
        fetch("mobile", "lang=en").await,
        fetch("desktop", "lang=en").await,
        fetch("mobile", "lang=fr").await,
    ];
    after.sort();
    assert_eq!(after, ["/p #4", "/p #5", "/p #6"], "every copy was purged");

    // The status page counts the requests each rule matched.
    let bearer = format!("Bearer {TOKEN}");
    let status = send(
        Method::GET,
        &node.admin_url("/status.json"),
        &[("authorization", &bearer)],
        "",
    )
    .await
    .json();
    assert_eq!(status["rules"][0]["host"], "shop.example");
    assert_eq!(status["rules"][0]["hits"], 9, "{}", status["rules"]);
}
