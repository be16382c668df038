//! Cluster membership with real `fanz-node` processes on loopback: SWIM gossip
//! (foca) sealed with the cluster keyring, seeds, failure detection, leave, rejoin.

mod common;

use std::time::Duration;

use http::{Method, StatusCode};

use common::cluster::*;
use common::*;
use fanz_protocol::ring::{Ring, RingMember};

fn alive_ids(seen: &[(String, String)]) -> Vec<String> {
    let mut ids: Vec<String> = seen
        .iter()
        .filter(|(_, s)| s == "alive")
        .map(|(i, _)| i.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_and_agree_on_the_owners_of_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = cluster_init(tmp.path(), 5);
    let first = ClusterNode::start("n1", &dirs[0], &[], FAST);
    let mut nodes = vec![first];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        // Everyone joins through n1 only: the rest is learned by gossip.
        let seed = nodes[0].gossip;
        nodes.push(ClusterNode::start(
            &format!("n{}", i + 1),
            dir,
            &[seed],
            FAST,
        ));
    }
    let everyone: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
    for n in &nodes {
        wait_until(
            &n.node,
            Duration::from_secs(15),
            "five alive members",
            |seen| alive_ids(seen) == everyone,
        )
        .await;
    }
    // The same members give the same ring: every node (and a client computing it
    // from the same list) routes a key to the same owners.
    let report = cluster_report(&nodes[2].node).await;
    assert_eq!(report["node_id"], "n3");
    assert_eq!(report["replicas"], 2);
    let members = report["members"].as_array().unwrap();
    let shares: f64 = members.iter().map(|m| m["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-9, "shares sum to {shares}");
    assert_eq!(members.iter().filter(|m| m["local"] == true).count(), 1);
    for m in members {
        assert!(m["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{m}");
        assert!(m["http"].as_str().unwrap().starts_with("127.0.0.1:"), "{m}");
    }
    // Every node knows every member by the same identity (id, addresses,
    // generation), which is all the ring is computed from.
    let identities = |report: &serde_json::Value| {
        let mut ids: Vec<String> = report["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{} {} {} {}",
                    m["id"], m["peer"], m["http"], m["generation"]
                )
            })
            .collect();
        ids.sort();
        ids
    };
    let reference = identities(&report);
    for n in &nodes {
        assert_eq!(identities(&cluster_report(&n.node).await), reference);
    }
    let ring = Ring::new(
        everyone.iter().map(|id| RingMember {
            id: id.clone(),
            weight: 1,
        }),
        2,
    );
    for (id, share) in ring.shares() {
        let reported = members.iter().find(|m| m["id"] == id).unwrap()["share"]
            .as_f64()
            .unwrap();
        assert!((reported - share).abs() < 1e-9);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_detected_and_rejoins_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = cluster_init(tmp.path(), 3);
    let a = ClusterNode::start("a", &dirs[0], &[], FAST);
    let b = ClusterNode::start("b", &dirs[1], &[a.gossip], FAST);
    let mut c = ClusterNode::start("c", &dirs[2], &[a.gossip], FAST);
    wait_until(&a.node, Duration::from_secs(10), "three alive", |s| {
        alive_ids(s).len() == 3
    })
    .await;

    c.node.kill();
    let detected = wait_until(&b.node, Duration::from_secs(10), "c declared down", |s| {
        has(s, "c", "down")
    })
    .await;
    // Probe period 200 ms and suspicion 1 s: detection takes a few probe periods
    // plus the suspicion time.
    assert!(
        detected >= Duration::from_millis(900),
        "{detected:?}: too fast to be real"
    );
    wait_until(&a.node, Duration::from_secs(10), "c down on a too", |s| {
        has(s, "c", "down") && has(s, "b", "alive")
    })
    .await;

    // Same id and address, new generation: it replaces its old down identity.
    c.node.restart();
    for n in [&a, &b] {
        wait_until(&n.node, Duration::from_secs(10), "c back", |s| {
            has(s, "c", "alive")
        })
        .await;
    }
    let report = cluster_report(&a.node).await;
    let cs: Vec<_> = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == "c")
        .collect();
    assert_eq!(cs.len(), 1, "one entry per member, not one per run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_leaves_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = cluster_init(tmp.path(), 2);
    // Slow failure detection: only a graceful leave can be this quick.
    let slow = &["--gossip-probe-period", "1s", "--gossip-suspicion", "30s"];
    let a = ClusterNode::start("a", &dirs[0], &[], slow);
    let mut b = ClusterNode::start("b", &dirs[1], &[a.gossip], slow);
    wait_until(&a.node, Duration::from_secs(10), "two alive", |s| {
        alive_ids(s).len() == 2
    })
    .await;
    assert!(b.node.terminate().success());
    let took = wait_until(&a.node, Duration::from_secs(3), "b gone", |s| {
        has(s, "b", "down")
    })
    .await;
    assert!(took < Duration::from_secs(3));
}

/// `POST /drain` (the Kubernetes preStop hook): the node leaves the cluster at once,
/// so ownership moves while it still serves, and stops being ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_leaves_the_cluster_and_keeps_serving() {
    let slow = &["--gossip-probe-period", "1s", "--gossip-suspicion", "30s"];
    let (_tmp, mut nodes) = start_cluster(3, slow).await;
    let (a, b) = (&nodes[0], &nodes[2]);
    let drain = |token: &str| {
        let auth = format!("Bearer {token}");
        let url = b.node.admin_url("/drain");
        async move { send(Method::POST, &url, &[("authorization", &auth)], "").await }
    };
    assert_eq!(drain("wrong").await.status, StatusCode::UNAUTHORIZED);
    let drained = drain(TOKEN).await;
    assert_eq!(drained.status, StatusCode::OK, "{}", drained.text());
    assert_eq!(drained.json()["left_cluster"], true);
    let took = wait_until(&a.node, Duration::from_secs(3), "n3 gone", |s| {
        has(s, "n3", "down")
    })
    .await;
    assert!(took < Duration::from_secs(3));
    let ready = send(Method::GET, &b.node.admin_url("/readyz"), &[], "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    // Still serving: a read through the drained node comes from the owners. A write
    // is refused with a 503 that sends it elsewhere (it no longer vouches for
    // anything), which retrying clients follow.
    let stored = put(&a.node, "k", "v", &[]).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.text());
    let read = get(&b.node, "k").await;
    assert_eq!((read.status, read.text().as_str()), (StatusCode::OK, "v"));
    let written = put(&b.node, "k2", "v", &[]).await;
    assert_eq!(written.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        written.text().contains("another node"),
        "{}",
        written.text()
    );
    assert!(nodes[2].node.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_under_a_wrong_key_or_garbage_is_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = cluster_init(&tmp.path().join("ours"), 1);
    let theirs = cluster_init(&tmp.path().join("theirs"), 1);
    let a = ClusterNode::start("a", &ours[0], &[], FAST);
    // Another cluster's node (another key) tries to join through a.
    let stranger = ClusterNode::start("stranger", &theirs[0], &[a.gossip], FAST);
    let garbage = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 300)).map(|j| (j * 31 + i) as u8).collect();
        garbage.send_to(&junk, a.gossip).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = a.node.metrics().await;
        let unknown = metric_value(&m, "fanz_gossip_datagrams_total{outcome=\"unknown_key\"}");
        let malformed = metric_value(&m, "fanz_gossip_datagrams_total{outcome=\"malformed\"}");
        if unknown.unwrap_or(0.0) >= 1.0 && malformed.unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "drops not counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nobody joined anybody.
    assert_eq!(states(&a.node).await.len(), 1);
    assert_eq!(states(&stranger.node).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_does_not_resolve_is_retried_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = cluster_init(tmp.path(), 2);
    let lonely = ClusterNode::start(
        "lonely",
        &dirs[0],
        &[],
        &["--seeds", "no-such-host.invalid:7946"],
    );
    // Serving anyway, and saying why it is alone, more than once (with backoff).
    let r = send(http::Method::GET, &lonely.node.url("/kv/x"), &[], "").await;
    assert_eq!(r.status, http::StatusCode::NOT_FOUND);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lonely
        .node
        .log_text()
        .matches("seed does not resolve")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            lonely.node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_describes_itself_as_a_cluster_of_one() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let bearer = format!("Bearer {TOKEN}");
    let r = send(
        http::Method::GET,
        &node.admin_url("/cluster"),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    let report = r.json();
    assert_eq!(report["alone"], true);
    assert_eq!(report["replicas"], 1);
    let members = report["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["http"], node.http.to_string());
    assert_eq!(members[0]["state"], "alive");
    // What a client needs to check its requests before sending them.
    assert_eq!(report["kv_prefix"], "/kv/");
    assert_eq!(report["max_key_size"], 8192);
    assert!(report["max_value_size"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_for_a_second_is_not_declared_down() {
    // Default timings (probe 1 s, suspicion 4 s): a 1 s stall (GC-like pause,
    // SIGSTOP) must not cost a member its keys, on either side of the pause.
    let tmp = tempfile::tempdir().unwrap();
    let dirs = cluster_init(tmp.path(), 3);
    let a = ClusterNode::start("a", &dirs[0], &[], &[]);
    let b = ClusterNode::start("b", &dirs[1], &[a.gossip], &[]);
    let c = ClusterNode::start("c", &dirs[2], &[a.gossip], &[]);
    for n in [&a, &b, &c] {
        wait_until(&n.node, Duration::from_secs(10), "three alive", |s| {
            alive_ids(s).len() == 3
        })
        .await;
    }
    signal(b.node.pid(), "STOP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(b.node.pid(), "CONT");
    let watch_until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < watch_until {
        for n in [&a, &b, &c] {
            let seen = states(&n.node).await;
            assert!(
                !seen.iter().any(|(_, s)| s == "down"),
                "{} declared a member down after a 1 s pause: {seen:?}",
                n.id
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A conditional write in a cluster: no node orders the writes of a key across
/// the nodes that write its owners, so one cannot evaluate `If-None-Match: *` or
/// `If-Match` with the guarantee they ask for. It is refused (501) and nothing is
/// written; an unconditional write still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_in_a_cluster_are_refused_and_write_nothing() {
    let (_tmp, nodes) = start_cluster(3, FAST).await;
    let node = &nodes[0].node;
    let r = put(node, "cas", "v", &[("if-none-match", "*")]).await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text());
    assert!(r.text().contains("nothing written"), "{}", r.text());
    assert_eq!(get(node, "cas").await.status, StatusCode::NOT_FOUND);
    // (201 or 204: a node that does not own the key cannot tell which.)
    assert!(put(node, "cas", "v", &[]).await.status.is_success());
    let r = send(
        Method::DELETE,
        &node.url("/kv/cas"),
        &[("if-match", "*")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text());
    assert_eq!(get(node, "cas").await.text(), "v");
}
