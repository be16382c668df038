//! What a real `fanz-node` process holds in memory, and gives back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use fanz_client::{Client, SetOptions};

/// Writes `value` under keys `m0`..`m{KEYS}` from eight tasks at once.
async fn write_all(client: &Arc<Client>, keys: usize, value: Bytes) {
    let mut writers = tokio::task::JoinSet::new();
    for first in 0..8 {
        let (client, value) = (client.clone(), value.clone());
        writers.spawn(async move {
            for k in (first..keys).step_by(8) {
                client
                    .set(format!("m{k}"), value.clone(), &SetOptions::default())
                    .await
                    .expect("write");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
}

/// The allocator keeps freed memory for a second before giving it back, so that a
/// node under writes does not fault the same pages in again and again; a node that
/// goes quiet must still give back what its last busy second freed, without a request
/// to make it (`allocator::purge_when_idle` in the binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_busy_spell_freed_goes_back_once_the_node_is_quiet() {
    const KEYS: usize = 6000;
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let client = Arc::new(
        Client::builder()
            .seeds([format!("http://{}", node.admin)])
            .token(TOKEN)
            .timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("client connects"),
    );
    let empty = node.resident_bytes();
    write_all(&client, KEYS, Bytes::from(vec![b'v'; 8 * 1024])).await;
    let full = node.resident_bytes();
    let held = full.saturating_sub(empty);
    assert!(
        held > 30 << 20,
        "{KEYS} values of 8 KiB should take more than 30 MiB: {held} bytes"
    );
    // Replacing every value with a small one frees the large ones.
    write_all(&client, KEYS, Bytes::from_static(b"small")).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = node.resident_bytes();
        if now < empty + held / 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after the writes the node still holds {} of the {held} bytes the large \
             values took (resident: empty {empty}, full {full}, now {now})",
            now.saturating_sub(empty)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
