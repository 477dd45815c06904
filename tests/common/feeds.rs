//! What the feed tests ask of a node: the items a feed tagged, a feed's status, and
//! waiting for either.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use entente::client::NodeClient;
use entente::rpc::proto::{FeedStatus, ItemFilter, StoredItem};

/// Every item the node holds with `tag`, by id.
pub async fn items_tagged(client: &NodeClient, tag: &str) -> BTreeMap<String, StoredItem> {
    let mut out = BTreeMap::new();
    let mut token = Vec::new();
    loop {
        let page = client
            .query(
                ItemFilter {
                    tag: tag.to_owned(),
                    include_expired: true,
                    ..Default::default()
                },
                1000,
                token,
            )
            .await
            .expect("query");
        for stored in page.items {
            let id = stored.item.as_ref().unwrap().id.clone();
            out.insert(id, stored);
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// The status of the feed `name`, as `Admin.Feeds` reports it.
pub async fn feed_status(client: &NodeClient, name: &str) -> FeedStatus {
    client
        .feeds()
        .await
        .expect("Admin.Feeds")
        .feeds
        .into_iter()
        .find(|f| f.name == name)
        .expect("the feed is reported")
}

/// Waits until `check` gives a value, polling every 100 ms, failing after `within`.
pub async fn wait_within<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
