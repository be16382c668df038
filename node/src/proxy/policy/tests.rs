//! The RFC's cases, section by section, against the rules of the parent module.

use super::*;
use http::HeaderValue;

const NOW: u64 = 1_700_000_000_000;

fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(*k, HeaderValue::from_str(v).unwrap());
    }
    m
}

fn date(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

const PLAIN: RequestFacts = RequestFacts {
    authorization: false,
    no_store: false,
};

fn eval(status: u16, headers: &[(&'static str, &str)]) -> Result<Storable, NotStored> {
    eval_req(PLAIN, status, headers)
}

fn eval_req(
    req: RequestFacts,
    status: u16,
    headers: &[(&'static str, &str)],
) -> Result<Storable, NotStored> {
    evaluate(
        &Method::GET,
        req,
        StatusCode::from_u16(status).unwrap(),
        &h(headers),
        NOW,
        NOW,
        Heuristics::default(),
    )
}

#[test]
fn age_values_by_section_5_1() {
    let age = |values: &[&str]| {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AGE, http::HeaderValue::from_str(v).unwrap());
        }
        age_seconds(&h)
    };
    assert_eq!(age(&["40"]), Some(40));
    assert_eq!(age(&[" 7 "]), Some(7));
    assert_eq!(age(&["99999999999999999999999"]), Some(1 << 31));
    for invalid in [
        &["abc"][..],
        &["-5"],
        &["1.5"],
        &["10, 20"],
        &["1", "2"],
        &[""],
        &[],
    ] {
        assert_eq!(age(invalid), None, "{invalid:?}");
    }
}

#[test]
fn must_understand_overrides_no_store_only_for_understood_statuses() {
    let cc = [("cache-control", "must-understand, no-store, max-age=60")];
    assert!(eval(200, &cc).is_ok());
    assert!(eval(307, &cc).is_ok());
    assert_eq!(eval(299, &cc), Err(NotStored::Status));
    assert_eq!(eval(500, &cc), Err(NotStored::Status));
    assert_eq!(
        eval(200, &[("cache-control", "no-store, max-age=60")]),
        Err(NotStored::NoStore)
    );
}

#[test]
fn no_cache_is_stale_from_the_start_whatever_max_age_says() {
    let s = eval(200, &[("cache-control", "no-cache, max-age=600")]).unwrap();
    assert_eq!(s.lifetime_ms, 0);
    assert!(s.no_cache);
}

// §3: storing responses.
#[test]
fn s3_only_get_and_final_statuses_are_stored() {
    let r = evaluate(
        &Method::POST,
        PLAIN,
        StatusCode::OK,
        &h(&[("cache-control", "max-age=60")]),
        NOW,
        NOW,
        Heuristics::default(),
    );
    assert_eq!(r, Err(NotStored::Method));
    // Any final status with explicit freshness (issue 17), never a 304.
    assert!(eval(500, &[("cache-control", "max-age=60")]).is_ok());
    assert!(eval(599, &[("cache-control", "max-age=60")]).is_ok());
    assert_eq!(
        eval(500, &[("last-modified", "Sat, 01 Jan 2000 00:00:00 GMT")]),
        Err(NotStored::NoFreshness),
        "500 is not heuristically cacheable"
    );
    for partial_or_update in [206, 304] {
        assert_eq!(
            eval(partial_or_update, &[("cache-control", "max-age=60")]),
            Err(NotStored::Status)
        );
    }
    assert_eq!(
        eval(302, &[]),
        Err(NotStored::NoFreshness),
        "302 is not heuristically cacheable"
    );
    assert!(eval(302, &[("cache-control", "max-age=60")]).is_ok());
    assert!(eval(404, &[("cache-control", "max-age=60")]).is_ok());
}

#[test]
fn s3_no_store_and_private_are_never_stored() {
    assert_eq!(
        eval(200, &[("cache-control", "no-store, max-age=60")]),
        Err(NotStored::NoStore)
    );
    assert_eq!(
        eval(200, &[("cache-control", "private, max-age=60")]),
        Err(NotStored::Private)
    );
    let req = RequestFacts {
        authorization: false,
        no_store: true,
    };
    assert_eq!(
        eval_req(req, 200, &[("cache-control", "max-age=60")]),
        Err(NotStored::NoStore)
    );
    // A qualified private= only keeps those fields out of the stored response.
    let s = eval(200, &[("cache-control", "private=\"X-User\", max-age=60")]).unwrap();
    assert_eq!(s.strip_fields, vec!["x-user".to_string()]);
}

// §3.5: requests with Authorization.
#[test]
fn s3_5_authorization_needs_an_explicit_permission() {
    let auth = RequestFacts {
        authorization: true,
        no_store: false,
    };
    assert_eq!(
        eval_req(auth, 200, &[("cache-control", "max-age=60")]),
        Err(NotStored::Authorization)
    );
    for allowed in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        assert!(
            eval_req(auth, 200, &[("cache-control", allowed)]).is_ok(),
            "{allowed}"
        );
    }
}

#[test]
fn set_cookie_is_shared_only_when_allowed() {
    assert_eq!(
        eval(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
        ),
        Err(NotStored::SetCookie)
    );
    assert!(eval(
        200,
        &[
            ("cache-control", "public, max-age=60"),
            ("set-cookie", "a=b")
        ]
    )
    .is_ok());
    let s = eval(
        200,
        &[
            ("cache-control", "max-age=60, no-cache=\"Set-Cookie\""),
            ("set-cookie", "a=b"),
        ],
    )
    .unwrap();
    assert_eq!(s.strip_fields, vec!["set-cookie".to_string()]);
    assert!(
        !s.no_cache,
        "a qualified no-cache does not force revalidation"
    );
}

// §4.1: Vary.
#[test]
fn s4_1_vary_star_is_never_stored() {
    assert_eq!(
        eval(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept, *")]
        ),
        Err(NotStored::VaryStar)
    );
    assert_eq!(
        vary_fields(&h(&[("vary", "Accept-Encoding, accept"), ("vary", "X-A")])),
        vec!["accept", "accept-encoding", "x-a"]
    );
}

// §4.2.1: freshness lifetime.
#[test]
fn s4_2_1_s_maxage_then_max_age_then_expires() {
    assert_eq!(
        eval(200, &[("cache-control", "max-age=10, s-maxage=20")])
            .unwrap()
            .lifetime_ms,
        20_000
    );
    assert_eq!(
        eval(200, &[("cache-control", "max-age=10")])
            .unwrap()
            .lifetime_ms,
        10_000
    );
    let s = eval(
        200,
        &[("date", &date(NOW)), ("expires", &date(NOW + 30_000))],
    )
    .unwrap();
    assert_eq!(s.lifetime_ms, 30_000);
    assert!(!s.heuristic);
    // max-age wins over Expires; an invalid Expires means already expired.
    assert_eq!(
        eval(
            200,
            &[
                ("cache-control", "max-age=5"),
                ("expires", &date(NOW + 30_000))
            ]
        )
        .unwrap()
        .lifetime_ms,
        5_000
    );
    assert_eq!(eval(200, &[("expires", "0")]).unwrap().lifetime_ms, 0);
}

#[test]
fn targeted_fields_take_precedence_for_this_cache() {
    let s = eval(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("cdn-cache-control", "max-age=600"),
        ],
    )
    .unwrap();
    assert_eq!(s.lifetime_ms, 600_000);
    let s = eval(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("surrogate-control", "max-age=300"),
        ],
    )
    .unwrap();
    assert_eq!(s.lifetime_ms, 300_000);
    let s = eval(
        200,
        &[
            ("cdn-cache-control", "max-age=1"),
            ("surrogate-control", "max-age=300"),
        ],
    )
    .unwrap();
    assert_eq!(s.lifetime_ms, 1_000, "CDN-Cache-Control first");
    assert_eq!(
        eval(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "no-store")
            ]
        ),
        Err(NotStored::NoStore)
    );
    // A targeted field ignores Expires (RFC 9213 §2.2).
    let s = eval(
        200,
        &[
            ("cdn-cache-control", "public"),
            ("expires", &date(NOW + 30_000)),
        ],
    )
    .unwrap();
    assert_eq!(s.lifetime_ms, 0);
}

// §4.2.2: heuristic freshness.
#[test]
fn s4_2_2_heuristic_only_where_allowed() {
    let s = eval(
        200,
        &[
            ("date", &date(NOW)),
            ("last-modified", &date(NOW - 1_000_000)),
        ],
    )
    .unwrap();
    assert!(s.heuristic);
    assert_eq!(s.lifetime_ms, 100_000);
    let capped = eval(
        200,
        &[
            ("date", &date(NOW)),
            ("last-modified", &date(NOW - 100 * 86_400_000)),
        ],
    )
    .unwrap();
    assert_eq!(capped.lifetime_ms, 86_400_000);
    assert_eq!(
        eval(200, &[]),
        Err(NotStored::NoFreshness),
        "nothing to base a heuristic on"
    );
    assert_eq!(
        eval(302, &[("last-modified", &date(NOW - 1_000_000))]),
        Err(NotStored::NoFreshness)
    );
}

// §4.2.3: age.
#[test]
fn s4_2_3_corrected_initial_age() {
    // Origin says Age: 10 s; the response took 2 s to arrive: initial age 12 s.
    assert_eq!(born_ms(None, 10_000, NOW - 2_000, NOW), NOW - 12_000);
    // Apparent age from Date wins when larger.
    assert_eq!(born_ms(Some(NOW - 30_000), 0, NOW, NOW), NOW - 30_000);
    // A Date in the future does not make content younger than now.
    assert_eq!(born_ms(Some(NOW + 30_000), 0, NOW, NOW), NOW);
    let s = eval(200, &[("cache-control", "max-age=60"), ("age", "15")]).unwrap();
    assert_eq!(s.born_ms, NOW - 15_000);
}

// §5.2.2 and RFC 5861: revalidation and stale windows.
#[test]
fn stale_windows_and_what_forbids_them() {
    let s = eval(
        200,
        &[(
            "cache-control",
            "max-age=60, stale-while-revalidate=30, stale-if-error=300",
        )],
    )
    .unwrap();
    assert_eq!(
        (s.stale_while_revalidate_ms, s.stale_if_error_ms),
        (30_000, 300_000)
    );
    for forbid in ["must-revalidate", "proxy-revalidate", "no-cache"] {
        let s = eval(
            200,
            &[(
                "cache-control",
                &format!("max-age=60, stale-while-revalidate=30, stale-if-error=300, {forbid}"),
            )],
        )
        .unwrap();
        assert_eq!(
            (s.stale_while_revalidate_ms, s.stale_if_error_ms),
            (0, 0),
            "{forbid}"
        );
    }
    let s = eval(200, &[("cache-control", "no-cache, max-age=60")]).unwrap();
    assert!(s.no_cache);
}

#[test]
fn malformed_caching_headers_are_not_stored() {
    assert_eq!(
        eval(200, &[("cache-control", "max-age=\"60")]),
        Err(NotStored::Malformed)
    );
    assert_eq!(
        eval(200, &[("cache-control", "max-age=sixty")]),
        Err(NotStored::Malformed)
    );
}
