//! Proto messages to domain types and back (`TryFrom`, destructuring completely so a
//! new field is a compile error).

use tonic::Status;

use super::proto::{
    Checkpoint, FeedBundle, ItemFilter, PullResponse, StoredItem as ProtoStoredItem, pull_response,
};
use crate::engine::PulledBundle;
use crate::model::{Distribution, IndicatorType, NodeId};
use crate::store::{ItemQuery, StoredItem};
use crate::sync::FeedEvent;
use crate::wire;

/// A wire distribution from a client, checked.
pub fn distribution(d: Option<wire::Distribution>) -> Result<Distribution, Status> {
    let Some(wire::Distribution {
        max_hops,
        recipients,
    }) = d
    else {
        return Ok(Distribution::default());
    };
    if recipients.len() > crate::model::MAX_RECIPIENTS {
        return Err(Status::invalid_argument("too many recipients"));
    }
    let recipients = recipients
        .iter()
        .map(|r| {
            NodeId::new(r).map_err(|e| Status::invalid_argument(format!("recipient {r:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Distribution {
        max_hops,
        recipients,
    })
}

/// A client's filter, checked.
pub fn item_query(filter: Option<ItemFilter>) -> Result<ItemQuery, Status> {
    let ItemFilter {
        value,
        indicator_type,
        tag,
        origin,
        modified_since_unix_ms,
        include_expired,
    } = filter.unwrap_or_default();
    let bounded = |name: &str, v: &str| {
        if v.len() > 4096 {
            Err(Status::invalid_argument(format!("{name} is too long")))
        } else {
            Ok(())
        }
    };
    bounded("value", &value)?;
    bounded("tag", &tag)?;
    let indicator_type = if indicator_type.is_empty() {
        None
    } else {
        Some(
            indicator_type
                .parse::<IndicatorType>()
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        )
    };
    let origin = if origin.is_empty() {
        None
    } else {
        Some(NodeId::new(&origin).map_err(|e| Status::invalid_argument(format!("origin: {e}")))?)
    };
    // A value given with the type ipv6 that is an IPv4-mapped address looks for the ipv4
    // item it was published as.
    let indicator_type = match indicator_type {
        Some(ty) if !value.is_empty() => {
            Some(crate::model::normalise_typed(ty, &value).map_or(ty, |(typed, _)| typed))
        }
        other => other,
    };
    Ok(ItemQuery {
        value: (!value.is_empty()).then_some(value),
        indicator_type,
        tag: (!tag.is_empty()).then_some(tag),
        origin,
        modified_since_ms: (modified_since_unix_ms != 0).then_some(modified_since_unix_ms),
        include_expired,
    })
}

impl From<&StoredItem> for ProtoStoredItem {
    fn from(stored: &StoredItem) -> Self {
        ProtoStoredItem {
            item: Some(wire::Item::from(&stored.item)),
            provenance: Some(wire::Provenance {
                origin: stored.origin.to_string(),
                bundle_id: stored.bundle_id.to_string(),
                received_from: stored.received_from.to_string(),
                hops: stored.hops,
                // The store holds only bundles that passed `crypto::verify`.
                signature_verified: true,
            }),
        }
    }
}

/// A served feed event as a `Pull` message.
pub fn pull_response(event: FeedEvent) -> PullResponse {
    let event = match event {
        FeedEvent::Bundle(PulledBundle { seq, hops, bundle }) => {
            pull_response::Event::Bundle(FeedBundle {
                seq,
                bundle: Some(bundle),
                hops,
            })
        }
        FeedEvent::Checkpoint { cursor, head } => {
            pull_response::Event::Checkpoint(Checkpoint { cursor, head })
        }
    };
    PullResponse { event: Some(event) }
}

/// A `Pull` message from a peer as a feed event; `None` when it carries none (no event,
/// or a bundle message without its bundle).
pub fn feed_event(message: PullResponse) -> Option<FeedEvent> {
    let PullResponse { event } = message;
    match event? {
        pull_response::Event::Bundle(FeedBundle { seq, bundle, hops }) => {
            Some(FeedEvent::Bundle(PulledBundle {
                seq,
                hops,
                bundle: bundle?,
            }))
        }
        pull_response::Event::Checkpoint(Checkpoint { cursor, head }) => {
            Some(FeedEvent::Checkpoint { cursor, head })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{feed_event, pull_response};
    use crate::engine::PulledBundle;
    use crate::rpc::proto::{FeedBundle, PullResponse};
    use crate::sync::FeedEvent;
    use crate::wire;

    #[test]
    fn feed_events_cross_the_wire_unchanged_and_empty_messages_carry_none() {
        let bundle = wire::SignedBundle {
            header_bytes: vec![1, 2, 3],
            signature: vec![4],
            ..Default::default()
        };
        let sent = pull_response(FeedEvent::Bundle(PulledBundle {
            seq: 7,
            hops: 2,
            bundle: bundle.clone(),
        }));
        let Some(FeedEvent::Bundle(received)) = feed_event(sent) else {
            panic!("a bundle message is a bundle event");
        };
        assert_eq!((received.seq, received.hops), (7, 2));
        assert_eq!(received.bundle, bundle);

        let sent = pull_response(FeedEvent::Checkpoint { cursor: 5, head: 9 });
        assert!(matches!(
            feed_event(sent),
            Some(FeedEvent::Checkpoint { cursor: 5, head: 9 })
        ));

        assert!(feed_event(PullResponse { event: None }).is_none());
        let no_bundle = PullResponse {
            event: Some(pull_response::Event::Bundle(FeedBundle {
                seq: 3,
                bundle: None,
                hops: 1,
            })),
        };
        assert!(feed_event(no_bundle).is_none());
    }
}
