//! Acknowledged means durable: a real `entente serve` process is killed with SIGKILL
//! while an analyst publishes, restarted on the same store, and every bundle the node
//! acknowledged before the kill is there, item by item. Three rounds on one store.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pki, client, write_config};
use entente::client::NodeClient;
use entente::config::ClientSettings;
use entente::rpc::proto::PublishRequest;
use entente::wire;

fn client_config(pki: &Pki, addr: &str) -> std::path::PathBuf {
    let path = pki.path().join("analyst.toml");
    std::fs::write(
        &path,
        format!(
            "[client]\nid = \"analyst.alice\"\ncert = \"{}\"\nkey = \"{}\"\ntrust_anchors = [\"{}\"]\nnode = \"{addr}\"\nnode_id = \"redmond.hq\"\n",
            pki.certs.cert_path("analyst.alice").display(),
            pki.certs.key_path("analyst.alice").display(),
            pki.ca_cert().display(),
        ),
    )
    .unwrap();
    path
}

fn draft(value: String) -> wire::Item {
    wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: wire::Tlp::Green as i32,
        tags: vec!["durability".into()],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value,
            ..Default::default()
        })),
    }
}

/// (bundle id, values) of every acknowledged publish.
type Acked = Arc<Mutex<Vec<(String, Vec<String>)>>>;

async fn publish_until_killed(client: NodeClient, round: usize, acked: Acked) {
    for call in 0.. {
        let values: Vec<String> = (0..200)
            .map(|i| format!("r{round}-c{call}-i{i}.example.com"))
            .collect();
        let request = PublishRequest {
            items: values.iter().cloned().map(draft).collect(),
            distribution: None,
            groups: Vec::new(),
        };
        match client.publish(tokio_stream::iter(vec![request])).await {
            Ok(response) => {
                assert_eq!(response.bundle_ids.len(), 1);
                assert_eq!(response.items_accepted, 200);
                acked
                    .lock()
                    .unwrap()
                    .push((response.bundle_ids[0].clone(), values));
            }
            // The node was killed: stop.
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_bundle_survives_sigkill() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.alice");
    let config = write_config(&pki, &hq, &[client("analyst.alice", "analyst")], &[]);
    let acked: Acked = Arc::default();

    for (round, kill_after) in [5usize, 12, 1].into_iter().enumerate() {
        let (mut child, addr) = common::serve(&config);
        let settings = ClientSettings::load(&client_config(&pki, &addr)).unwrap();
        let publisher = NodeClient::connect_with(&settings).await.unwrap();
        let before = acked.lock().unwrap().len();
        let task = tokio::spawn(publish_until_killed(publisher, round, acked.clone()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < before + kill_after {
            assert!(Instant::now() < deadline, "publishing made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // SIGKILL while the publisher keeps going: a publish is very likely in flight.
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();

        // Restart on the same store: every acknowledged bundle is there, item by item.
        let (mut child, addr) = common::serve(&config);
        let settings = ClientSettings::load(&client_config(&pki, &addr)).unwrap();
        let reader = NodeClient::connect_with(&settings).await.unwrap();
        let acked_now = acked.lock().unwrap().clone();
        assert!(acked_now.len() >= before + kill_after);
        for (bundle_id, values) in &acked_now {
            for value in values {
                let filter = entente::rpc::proto::ItemFilter {
                    value: value.clone(),
                    ..Default::default()
                };
                let page = reader.query(filter, 10, vec![]).await.unwrap();
                assert_eq!(
                    page.items.len(),
                    1,
                    "{value} of acknowledged {bundle_id} is missing after kill -9"
                );
                let provenance = page.items[0].provenance.clone().unwrap();
                assert_eq!(&provenance.bundle_id, bundle_id);
                assert!(provenance.signature_verified);
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
