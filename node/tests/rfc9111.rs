//! RFC 9111 behaviours at a default node, by section, over HTTP/1.1, HTTP/2 and
//! HTTP/3 (issue 17, part 2). The older section tests are in `proxy.rs`.

// The test is the node's client and origin: it reads the real wall clock, as they do.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, SystemTime};

use common::origin::{respond, Seen, TestOrigin};
use common::*;
use http::{Method, StatusCode};

fn node_for(origin: &TestOrigin) -> (tempfile::TempDir, TestNode) {
    let (tmp, data) = data_dir();
    let url = origin.url();
    (tmp, TestNode::start(&data, &["--origin", url.as_str()]))
}

fn cache_status(r: &Reply) -> String {
    r.header("cache-status").unwrap_or_default()
}

/// Fetches `path` twice; true when the second answer came from the cache without
/// asking the origin.
async fn reused(node: &TestNode, origin: &TestOrigin, path: &str) -> bool {
    let first = request(node, Method::GET, path, &[], "").await;
    let before = origin.count(path);
    let second = request(node, Method::GET, path, &[], "").await;
    assert_eq!(
        first.status,
        second.status,
        "{path}: {}",
        cache_status(&second)
    );
    origin.count(path) == before
}

/// The origin answers `/{status}/{cache-control}` with that status and header, and
/// `?age=` / `?expires=` add those headers; a request with a matching
/// `If-None-Match` gets 304.
fn by_path(req: &Seen, n: usize) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (path, query) = req.path.split_once('?').unwrap_or((req.path.as_str(), ""));
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let cc = parts
        .next()
        .unwrap_or("")
        .replace("%20", " ")
        .replace("%22", "\"")
        .replace("%2C", ",");
    let etag = "\"v1\"".to_string();
    let not_modified = req
        .headers
        .get("if-none-match")
        .is_some_and(|v| v == etag.as_str());
    let mut headers: Vec<(String, String)> = vec![("etag".into(), etag.clone())];
    if !cc.is_empty() {
        headers.push(("cache-control".into(), cc));
    }
    // `name=value` goes on 200s, `u-name=value` on 304s only.
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = v.replace("%20", " ").replace("%2C", ",");
        match (k.strip_prefix("u-"), not_modified) {
            (Some(k), true) => headers.push((k.to_string(), v)),
            (None, false) => headers.push((k.to_string(), v)),
            _ => {}
        }
    }
    if not_modified {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        return respond(304, &headers, "");
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    respond(status, &headers, format!("{} #{n}", req.path))
}

// §5.2.2.4: a response with no-cache is stored, but revalidated before every reuse,
// whatever its freshness lifetime says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_2_2_4_no_cache_is_revalidated_before_every_reuse() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        let path = "/200/no-cache,%20max-age=600";
        for round in 1..=3 {
            let r = request(&node, Method::GET, path, &[], "").await;
            assert_eq!(r.status, StatusCode::OK, "{proto:?} round {round}");
            assert_eq!(
                r.text(),
                format!("{path} #1"),
                "{proto:?}: the 304 keeps the stored body"
            );
            assert_eq!(
                origin.count(path),
                round,
                "{proto:?} round {round}: not revalidated"
            );
        }
        assert_eq!(
            origin.last(path).unwrap().headers["if-none-match"],
            "\"v1\"",
            "{proto:?}: revalidated with the stored validator"
        );
    })
    .await;
}

// §4.2.3: the Age received counts; the Age sent is the current age, on a fill too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s4_2_3_the_received_age_counts_and_fills_send_it() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        assert!(
            !reused(&node, &origin, "/200/max-age=3600?age=7200").await,
            "{proto:?}: Age 7200 with max-age=3600 is stale on arrival"
        );
        let fill = request(&node, Method::GET, "/200/max-age=3600?age=40", &[], "").await;
        let age: u64 = fill.header("age").unwrap_or_default().parse().unwrap_or(0);
        assert!((40..45).contains(&age), "{proto:?}: a fill sent Age {age}");
        let hit = request(&node, Method::GET, "/200/max-age=3600?age=40", &[], "").await;
        let age: u64 = hit.header("age").unwrap_or_default().parse().unwrap_or(0);
        assert!((40..45).contains(&age), "{proto:?}: a hit sent Age {age}");
    })
    .await;
}

// §5.1 and §1.2.2: an invalid Age is ignored; one too large to represent is 2^31.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_1_invalid_age_values() {
    let origin = TestOrigin::start(by_path).await;
    let (_tmp, node) = node_for(&origin);
    for ignored in ["abc", "-5", "1.5", "10%2C%2020", ""] {
        let path = format!("/200/max-age=600?age={ignored}");
        assert!(
            reused(&node, &origin, &path).await,
            "Age {ignored:?} was not ignored"
        );
    }
    assert!(
        !reused(
            &node,
            &origin,
            "/200/max-age=600?age=99999999999999999999999"
        )
        .await,
        "an overflowing Age is 2^31 seconds: stale"
    );
}

// §3: any final status with explicit freshness may be stored; heuristic freshness
// only for the heuristically cacheable ones (RFC 9110 §15.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_final_statuses_with_explicit_freshness_are_stored() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        for status in [200, 203, 400, 404, 410, 500, 502, 503, 504, 599] {
            let path = format!("/{status}/max-age=600");
            assert!(
                reused(&node, &origin, &path).await,
                "{proto:?}: {status} with max-age not stored"
            );
        }
        let lm = "?last-modified=Sat,%2001%20Jan%202000%2000:00:00%20GMT";
        for status in [500, 503, 400] {
            let path = format!("/{status}/{lm}");
            assert!(
                !reused(&node, &origin, &path).await,
                "{proto:?}: {status} cached heuristically"
            );
        }
        assert!(
            reused(&node, &origin, &format!("/404/{lm}")).await,
            "{proto:?}: 404 is heuristically cacheable"
        );
    })
    .await;
}

/// `t` as an RFC 9110 §5.6.7 date in each of its three forms.
fn date_forms(t: SystemTime) -> [String; 3] {
    let imf = httpdate::fmt_http_date(t); // "Sun, 06 Nov 1994 08:49:37 GMT"
    let f: Vec<&str> = imf.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    let (wday, day, month, year, time) = (f[0], f[1], f[2], f[3], f[4]);
    let long = match wday {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let rfc850 = format!("{long}, {day}-{month}-{} {time} GMT", &year[2..]);
    let asctime = format!(
        "{wday} {month} {:>2} {time} {year}",
        day.trim_start_matches('0')
    );
    [imf, rfc850, asctime]
}

// §5.3: Expires in all three date forms; an invalid date means already expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_3_expires_in_every_date_form_and_invalid_means_expired() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        let later = SystemTime::now() + Duration::from_secs(3600);
        for (i, form) in date_forms(later).iter().enumerate() {
            let path = format!(
                "/200/?n={i}&expires={}",
                form.replace(' ', "%20").replace(',', "%2C")
            );
            assert!(
                reused(&node, &origin, &path).await,
                "{proto:?}: Expires {form:?} not honoured"
            );
        }
        for (i, bad) in ["0", "yesterday", "-1"].iter().enumerate() {
            let path = format!("/200/?bad={i}&expires={bad}");
            assert!(
                !reused(&node, &origin, &path).await,
                "{proto:?}: Expires {bad:?} served fresh"
            );
        }
    })
    .await;
}

// §4.3.2 and §4.3.1: a client's own conditional reaches the origin on a miss (the
// cache has nothing of its own to answer it with); the origin's 304 passes to the
// client, and a 200 (the condition was false) is stored as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s4_3_a_clients_conditional_reaches_the_origin_on_a_miss() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        let path = "/200/max-age=600";
        let r = request(&node, Method::GET, path, &[("if-none-match", "\"v1\"")], "").await;
        assert_eq!(
            r.status,
            StatusCode::NOT_MODIFIED,
            "{proto:?}: {}",
            cache_status(&r)
        );
        assert_eq!(
            origin.last(path).unwrap().headers["if-none-match"],
            "\"v1\"",
            "{proto:?}: the client's validator reached the origin"
        );
        // The condition false: a 200, stored, and later requests are hits.
        let r = request(
            &node,
            Method::GET,
            path,
            &[("if-none-match", "\"other\"")],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}");
        let seen = origin.count(path);
        let r = request(&node, Method::GET, path, &[], "").await;
        assert_eq!(r.text(), format!("{path} #2"), "{proto:?}");
        assert_eq!(
            origin.count(path),
            seen,
            "{proto:?}: not stored after the 200"
        );
        // And a conditional on a hit is answered by the cache.
        let r = request(&node, Method::GET, path, &[("if-none-match", "\"v1\"")], "").await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{proto:?}");
        assert_eq!(origin.count(path), seen, "{proto:?}");
    })
    .await;
}

// §4.3.5 / RFC 9110 §9.3.2: a HEAD the cache cannot answer goes to the origin as HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_miss_reaches_the_origin_as_head() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        let path = "/200/max-age=600";
        let r = request(&node, Method::HEAD, path, &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}");
        assert!(r.body.is_empty(), "{proto:?}");
        assert_eq!(origin.last(path).unwrap().method, Method::HEAD, "{proto:?}");
        // A GET then fills the cache, and a HEAD is answered from it.
        request(&node, Method::GET, path, &[], "").await;
        let seen = origin.count(path);
        let r = request(&node, Method::HEAD, path, &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}");
        assert_eq!(
            origin.count(path),
            seen,
            "{proto:?}: HEAD after GET is a hit"
        );
    })
    .await;
}

// §5.2.2.4 and §5.2.2.7: the fields named by `no-cache="..."` and `private="..."` are
// not stored, so no later response carries them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_2_2_qualified_no_cache_and_private_drop_their_fields() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        for directive in ["private", "no-cache"] {
            let path =
                format!("/200/max-age=600,%20{directive}=%22x-secret%22?x-secret=1&x-kept=1");
            request(&node, Method::GET, &path, &[], "").await;
            let hit = request(&node, Method::GET, &path, &[], "").await;
            assert_eq!(origin.count(&path), 1, "{proto:?} {directive}: not stored");
            assert!(
                hit.header("x-secret").is_none(),
                "{proto:?} {directive}: field kept"
            );
            assert_eq!(
                hit.header("x-kept").as_deref(),
                Some("1"),
                "{proto:?} {directive}"
            );
        }
    })
    .await;
}

// §5.2.2.3: must-understand lets a cache that understands the status ignore no-store;
// with a status it does not understand, nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_2_2_3_must_understand() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        let known = "/200/must-understand,%20no-store,%20max-age=600";
        assert!(
            reused(&node, &origin, known).await,
            "{proto:?}: 200 with must-understand not stored"
        );
        let unknown = "/299/must-understand,%20no-store,%20max-age=600";
        assert!(
            !reused(&node, &origin, unknown).await,
            "{proto:?}: 299 stored"
        );
        let plain = "/200/no-store,%20max-age=600";
        assert!(
            !reused(&node, &origin, plain).await,
            "{proto:?}: no-store stored"
        );
    })
    .await;
}

// §4.2.1, §5.2: directive names are case-insensitive; an invalid max-age is no
// lifetime; of duplicates the first counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_2_cache_control_parsing() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        for fresh in [
            "MAX-AGE=600",
            "Max-Age=600,%20max-age=0",
            "max-age=%22600%22",
        ] {
            assert!(
                reused(&node, &origin, &format!("/200/{fresh}")).await,
                "{proto:?}: {fresh}"
            );
        }
        for invalid in [
            "max-age%20=600",
            "max-age=a100",
            "max-age=1.5",
            "max-age=-600",
        ] {
            assert!(
                !reused(&node, &origin, &format!("/200/{invalid}")).await,
                "{proto:?}: {invalid}"
            );
        }
    })
    .await;
}

// §3.2 and §4.3.4: a 304 updates the stored fields, except those never stored
// (hop-by-hop ones among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s4_3_4_a_304_updates_stored_fields_but_not_hop_by_hop_ones() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        let path =
            "/200/no-cache?x-version=1&u-x-version=2&u-keep-alive=timeout=5&u-proxy-connection=x";
        let first = request(&node, Method::GET, path, &[], "").await;
        assert_eq!(first.header("x-version").as_deref(), Some("1"));
        for round in ["revalidated", "again"] {
            let r = request(&node, Method::GET, path, &[], "").await;
            assert_eq!(
                r.header("x-version").as_deref(),
                Some("2"),
                "{proto:?} {round}"
            );
            assert!(
                r.header("keep-alive").is_none(),
                "{proto:?} {round}: hop-by-hop stored"
            );
            assert!(
                r.header("proxy-connection").is_none(),
                "{proto:?} {round}: hop-by-hop stored"
            );
        }
    })
    .await;
}

/// A GET of `path` with the request directives `cc`.
async fn get_with(node: &TestNode, path: &str, cc: &str) -> Reply {
    request(node, Method::GET, path, &[("cache-control", cc)], "").await
}

// §5.2.1: the request's own directives: max-age (an older stored response is
// revalidated), min-fresh (one fresh for less is revalidated), only-if-cached (a miss
// is a 504, a hit is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s5_2_1_request_directives() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        // Age 40 from the origin: older than max-age=10, younger than max-age=100.
        let path = "/200/max-age=600?age=40";
        get_with(&node, path, "max-age=100").await;
        get_with(&node, path, "max-age=100").await;
        assert_eq!(
            origin.count(path),
            1,
            "{proto:?}: max-age=100 allows age 40"
        );
        get_with(&node, path, "max-age=10").await;
        assert_eq!(
            origin.count(path),
            2,
            "{proto:?}: max-age=10 refuses age 40"
        );
        // Fresh for about 560 s more: min-fresh=100 takes it, min-fresh=1000 does not.
        let path = "/200/max-age=600?age=40&n=2";
        get_with(&node, path, "min-fresh=100").await;
        get_with(&node, path, "min-fresh=100").await;
        assert_eq!(origin.count(path), 1, "{proto:?}: min-fresh=100");
        get_with(&node, path, "min-fresh=1000").await;
        assert_eq!(origin.count(path), 2, "{proto:?}: min-fresh=1000");
        // only-if-cached: a miss never reaches the origin.
        let r = get_with(&node, "/200/max-age=600?n=3", "only-if-cached").await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{proto:?}");
        assert_eq!(origin.count("/200/max-age=600?n=3"), 0, "{proto:?}");
        let r = get_with(&node, "/200/max-age=600?age=40", "only-if-cached").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{proto:?}: a hit with only-if-cached"
        );
    })
    .await;
}

// §3.5: a response to a request with Authorization is not shared, unless its
// directives allow a shared cache to store it (public, s-maxage, must-revalidate);
// then it answers later requests, with Authorization too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_5_authorization() {
    for_each_protocol(async |proto| {
        let origin = TestOrigin::start(by_path).await;
        let (_tmp, node) = node_for(&origin);
        let node = node.with_proto(proto);
        let auth = [("authorization", "Basic dTpw")];
        for (cc, shared) in [
            ("max-age=600", false),
            ("public,%20max-age=600", true),
            ("s-maxage=600", true),
        ] {
            let path = format!("/200/{cc}");
            request(&node, Method::GET, &path, &auth, "").await;
            request(&node, Method::GET, &path, &auth, "").await;
            let expected = if shared { 1 } else { 2 };
            assert_eq!(origin.count(&path), expected, "{proto:?}: {cc}");
        }
    })
    .await;
}
