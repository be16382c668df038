//! The status page on the admin port, seen in a real browser: Debian's headless
//! Chromium driven by `tests/browser/status_page.mjs` (playwright-core), against a
//! real node. Keeps a screenshot in `target/tmp/artifacts/status-page.png`.
//!
//! Needs node, `npm ci` in `tests/browser` and /usr/bin/chromium (`.ci/run` installs
//! them and sets `FANZ_REQUIRE_BROWSER=1`, so CI fails rather than skip). Elsewhere,
//! without them, the browser half says it was skipped and why; the HTTP half runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use http::{Method, StatusCode};

/// A key and a tag that would run script if the page rendered them as markup.
const EVIL_KEY: &str = "<script>window.pwned=1</script>";
const EVIL_TAG: &str = "<img/src=x/onerror=window.pwned=2>";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser cannot run here, if it cannot.
fn browser_missing() -> Option<String> {
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node (Node.js) is not installed".into());
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "playwright-core is not installed: run `npm ci` in {}",
            browser_dir().display()
        ));
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing: apt-get install chromium"));
    }
    None
}

/// Opens `url` in Chromium with `token` as the Basic password ("" for none) and
/// returns what the page showed.
fn open_in_browser(url: &str, token: &str, screenshot: &Path) -> serde_json::Value {
    let out = Command::new("node")
        .arg(browser_dir().join("status_page.mjs"))
        .args([url, token])
        .arg(screenshot)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "the browser script failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "browser output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn admin_get(node: &TestNode, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    send(Method::GET, &node.admin_url(path), &headers, "").await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_the_node_and_renders_keys_and_tags_as_text() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--node-id", "edge-status-1"]);

    // Some traffic: a memory hit, a miss, and two purges naming markup.
    let tag_header = format!("plain {EVIL_TAG}");
    assert_eq!(
        put(&node, "page:1", "hello", &[("surrogate-key", &tag_header)])
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(get(&node, "page:1").await.status, StatusCode::OK);
    assert_eq!(get(&node, "absent").await.status, StatusCode::NOT_FOUND);
    let purge = serde_json::json!({ "keys": [EVIL_KEY] }).to_string();
    assert_eq!(admin_purge(&node, &purge).await.status, StatusCode::OK);
    let purge = serde_json::json!({ "tags": [EVIL_TAG] }).to_string();
    let purged = admin_purge(&node, &purge).await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());

    // Every part of the page is behind the token.
    for path in ["/", "/status.js", "/status.css", "/status.json"] {
        let denied = admin_get(&node, path, None).await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{path}");
        let challenges: Vec<_> = denied
            .headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(
            challenges.iter().any(|c| c.starts_with("Basic ")),
            "{path}: a browser must be asked for the token: {challenges:?}"
        );
        assert_eq!(
            admin_get(&node, path, Some("wrong")).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let page = admin_get(&node, "/", Some(TOKEN)).await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    let status = admin_get(&node, "/status.json", Some(TOKEN)).await.json();
    assert_eq!(status["node"]["id"], "edge-status-1");
    assert_eq!(status["lookups"]["memory"]["hit"], 1);
    assert!(status["lookups"]["memory"]["miss"].as_u64().unwrap() >= 1);
    let purges = status["purges"].as_array().unwrap();
    assert_eq!(purges.len(), 2);
    assert_eq!(purges[0]["tags"][0], EVIL_TAG, "newest first");
    assert_eq!(
        get(&node, "page:1").await.status,
        StatusCode::NOT_FOUND,
        "page:1 carried the tag"
    );
    assert_eq!(purges[1]["keys"][0], EVIL_KEY);
    assert!(purges[0]["answered_ms"].as_f64().unwrap() > 0.0);

    if let Some(reason) = browser_missing() {
        assert!(
            std::env::var_os("FANZ_REQUIRE_BROWSER").is_none(),
            "FANZ_REQUIRE_BROWSER is set but the browser cannot run: {reason}"
        );
        eprintln!("SKIPPED the browser half of this test: {reason}");
        return;
    }
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let url = node.admin_url("/");

    // Without the token, a person sees the refusal, not the status.
    let refused = tokio::task::spawn_blocking({
        let (url, shot) = (url.clone(), artifacts.join("status-page-refused.png"));
        move || open_in_browser(&url, "", &shot)
    })
    .await
    .unwrap();
    assert_eq!(refused["status"], 401, "{refused}");
    assert!(
        refused["body"].as_str().unwrap().contains("admin token"),
        "{refused}"
    );

    let screenshot = artifacts.join("status-page.png");
    let seen = tokio::task::spawn_blocking({
        let (url, shot) = (url.clone(), screenshot.clone());
        move || open_in_browser(&url, TOKEN, &shot)
    })
    .await
    .unwrap();
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["title"], "FANZ Edge status");
    assert_eq!(seen["nodeId"], "edge-status-1");
    let summary = seen["summary"].as_str().unwrap();
    assert!(
        summary.contains("single node") && summary.contains("ready"),
        "{summary}"
    );
    assert!(
        seen["connection"].as_str().unwrap().starts_with("live"),
        "{seen}"
    );

    let members = seen["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{seen}");
    assert_eq!(members[0][0], "edge-status-1 (this node)");
    assert_eq!(members[0][1], "alive");
    assert!(members[0][4].as_str().unwrap().contains("100.0%"), "{seen}");

    // Nothing was looked up between the page's polls.
    assert_eq!(seen["hitWindow"], "idle", "{seen}");
    // One memory hit and at least one miss: a ratio strictly between 0 and 100%.
    let total = seen["hitTotal"].as_str().unwrap();
    let ratio: f64 = total
        .trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("{total}"));
    assert!(ratio > 0.0 && ratio < 100.0, "{total}");
    assert_eq!(seen["tierHits"][0][0], "memory");
    assert_eq!(seen["tierHits"][0][1], "1", "{seen}");
    assert_eq!(seen["usage"][0][0], "memory");
    assert_eq!(seen["usage"][1][0], "disk");

    // The markup is shown as text, and nothing of it ran or became an element.
    let purges = seen["purges"].as_array().unwrap();
    assert_eq!(purges.len(), 2, "{seen}");
    assert!(
        purges[0][2]
            .as_str()
            .unwrap()
            .contains(&format!("tag {EVIL_TAG}")),
        "{seen}"
    );
    assert_eq!(
        purges[0][3], "0",
        "a tag purge leaves tombstones, not dependents"
    );
    assert!(purges[0][5].as_str().unwrap().contains("this node only"));
    assert!(
        purges[1][2]
            .as_str()
            .unwrap()
            .contains(&format!("key {EVIL_KEY}")),
        "{seen}"
    );
    assert_eq!(seen["scripts"], 1, "only the page's own script: {seen}");
    assert_eq!(seen["images"], 0, "{seen}");
    assert_eq!(seen["pwned"], serde_json::Value::Null, "{seen}");

    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", screenshot.display());
}
