//! Proto messages to domain types and back (`TryFrom`, destructuring completely so a
//! new field is a compile error).

use tonic::Status;

use super::proto::{
    BundlePart, BundleResume, Checkpoint, FeedBundle, ItemFilter, PullResponse,
    StoredItem as ProtoStoredItem, pull_response,
};
use crate::engine::PulledBundle;
use crate::model::{Distribution, IndicatorType, NodeId};
use crate::store::{ItemQuery, StoredItem};
use crate::sync::FeedEvent;
use crate::sync::parts::{Opening, Part, Resume};
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
        added_after_ms: None,
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

/// A served feed event, its position sealed, as a `Pull` message.
pub fn pull_response(event: FeedEvent<Vec<u8>>) -> PullResponse {
    let event = match event {
        FeedEvent::Part {
            after,
            part:
                Part {
                    hops,
                    index,
                    last,
                    transfer,
                    opening,
                    header_chunk,
                    disclosures,
                },
        } => {
            let (header_len, signature, disclosed) = match opening {
                Some(Opening {
                    header_len,
                    signature,
                    disclosed,
                }) => (header_len, signature, disclosed),
                None => (0, Vec::new(), 0),
            };
            pull_response::Event::Bundle(FeedBundle {
                whole_bundle: Vec::new(),
                hops,
                part: Some(BundlePart {
                    index,
                    last,
                    transfer_sha256: transfer.to_vec(),
                    header_len,
                    signature,
                    disclosed,
                    header_chunk,
                    disclosures,
                }),
                after,
            })
        }
        FeedEvent::Checkpoint { cursor, caught_up } => {
            pull_response::Event::Checkpoint(Checkpoint { cursor, caught_up })
        }
    };
    PullResponse { event: Some(event) }
}

/// The `Pull` messages that carry `bundle` whole at feed position `seq` (its parts, as
/// a node serves them), for tools and tests that stand in for a serving node: their
/// position tokens are in the clear (`sync::positions::plain_token`).
pub fn bundle_responses(seq: u64, hops: u32, bundle: wire::SignedBundle) -> Vec<PullResponse> {
    let after = crate::sync::positions::plain_token(seq.saturating_sub(1));
    crate::sync::parts::split(PulledBundle { seq, hops, bundle })
        .map(|part| {
            pull_response(FeedEvent::Part {
                after: after.clone(),
                part,
            })
        })
        .collect()
}

/// A position token from a peer, bounded.
fn token(token: Vec<u8>, what: &str) -> Result<Vec<u8>, String> {
    if token.len() > crate::sync::positions::MAX_TOKEN_BYTES {
        return Err(format!(
            "the peer sent a {what} position token of {} bytes; at most {}",
            token.len(),
            crate::sync::positions::MAX_TOKEN_BYTES
        ));
    }
    Ok(token)
}

/// A `Pull` message from a peer as a feed event; `None` when it carries none (no
/// event). An error when it is not of this protocol: a whole bundle (a peer of
/// protocol 1), a bundle message without its part or its position token, a malformed
/// transfer digest, a position token longer than a node issues.
pub fn feed_event(message: PullResponse) -> Result<Option<FeedEvent<Vec<u8>>>, String> {
    let PullResponse { event } = message;
    let Some(event) = event else {
        return Ok(None);
    };
    match event {
        pull_response::Event::Bundle(FeedBundle {
            whole_bundle,
            hops,
            part,
            after,
        }) => {
            if !whole_bundle.is_empty() {
                return Err(format!(
                    "the peer sent a bundle whole, as federation protocol 1 does; this node pulls bundles in parts (protocol {}): upgrade the peer",
                    super::PROTOCOL_VERSION
                ));
            }
            let Some(BundlePart {
                index,
                last,
                transfer_sha256,
                header_len,
                signature,
                disclosed,
                header_chunk,
                disclosures,
            }) = part
            else {
                return Err("the peer sent a bundle message without its part".to_owned());
            };
            if after.is_empty() {
                return Err(format!(
                    "the peer sent a bundle part without its position token, as federation protocol 2 does; this node pulls with sealed positions (protocol {}): upgrade the peer",
                    super::PROTOCOL_VERSION
                ));
            }
            let after = token(after, "bundle")?;
            let transfer: [u8; 32] = transfer_sha256.as_slice().try_into().map_err(|_| {
                "the peer sent a part whose transfer digest is not 32 bytes".to_owned()
            })?;
            Ok(Some(FeedEvent::Part {
                after,
                part: Part {
                    hops,
                    index,
                    last,
                    transfer,
                    opening: (index == 0).then_some(Opening {
                        header_len,
                        signature,
                        disclosed,
                    }),
                    header_chunk,
                    disclosures,
                },
            }))
        }
        pull_response::Event::Checkpoint(Checkpoint { cursor, caught_up }) => {
            Ok(Some(FeedEvent::Checkpoint {
                cursor: token(cursor, "checkpoint")?,
                caught_up,
            }))
        }
    }
}

/// A puller's resume point, checked, its position still sealed (the caller opens it).
pub fn resume(resume: Option<BundleResume>) -> Result<Option<Resume<Vec<u8>>>, Status> {
    let Some(BundleResume {
        hops,
        transfer_sha256,
        next_part,
        after,
    }) = resume
    else {
        return Ok(None);
    };
    let transfer: [u8; 32] = transfer_sha256
        .as_slice()
        .try_into()
        .map_err(|_| Status::invalid_argument("resume.transfer_sha256 is 32 bytes"))?;
    Ok(Some(Resume {
        after,
        hops,
        transfer,
        next_part,
    }))
}

/// A resume point as a `Pull` request field.
pub fn resume_request(resume: Option<Resume<Vec<u8>>>) -> Option<BundleResume> {
    resume.map(
        |Resume {
             after,
             hops,
             transfer,
             next_part,
         }| BundleResume {
            hops,
            transfer_sha256: transfer.to_vec(),
            next_part,
            after,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::{bundle_responses, feed_event, pull_response};
    use crate::rpc::proto::{BundlePart, FeedBundle, PullResponse, pull_response as event};
    use crate::sync::FeedEvent;
    use crate::sync::positions::plain_token;
    use crate::wire;

    #[test]
    fn feed_events_cross_the_wire_unchanged_and_other_protocols_are_refused() {
        let bundle = wire::SignedBundle {
            header_bytes: vec![1, 2, 3],
            signature: vec![4],
            disclosures: vec![wire::Disclosure {
                index: 0,
                salt: vec![0; 16],
                item_bytes: vec![5; 10],
            }],
        };
        let sent = bundle_responses(7, 2, bundle);
        assert_eq!(sent.len(), 1, "a small bundle is one part");
        let Ok(Some(FeedEvent::Part {
            after,
            part: received,
        })) = feed_event(sent[0].clone())
        else {
            panic!("a part message is a part event");
        };
        assert_eq!(after, plain_token(6));
        assert_eq!((received.hops, received.index), (2, 0));
        assert!(received.last);
        assert_eq!(received.header_chunk, vec![1, 2, 3]);
        assert_eq!(
            pull_response(FeedEvent::Part {
                after,
                part: received.clone()
            }),
            sent[0].clone()
        );

        let sent = pull_response(FeedEvent::Checkpoint {
            cursor: vec![5; 36],
            caught_up: true,
        });
        assert!(matches!(
            feed_event(sent),
            Ok(Some(FeedEvent::Checkpoint { cursor, caught_up: true })) if cursor == vec![5; 36]
        ));
        // A token longer than any node issues is refused before it is kept.
        let long = pull_response(FeedEvent::Checkpoint {
            cursor: vec![5; 65],
            caught_up: false,
        });
        assert!(feed_event(long).is_err());

        assert!(matches!(feed_event(PullResponse { event: None }), Ok(None)));
        let bundle_message = |whole_bundle: Vec<u8>, after: Vec<u8>| PullResponse {
            event: Some(event::Event::Bundle(FeedBundle {
                whole_bundle,
                hops: 1,
                part: Some(BundlePart {
                    last: true,
                    transfer_sha256: vec![0; 32],
                    ..Default::default()
                }),
                after,
            })),
        };
        let old = feed_event(bundle_message(vec![10, 3, 1, 2, 3], vec![1])).unwrap_err();
        assert!(old.contains("protocol 1"), "{old}");
        // A part without its position: a peer of protocol 2.
        let old = feed_event(bundle_message(vec![], vec![])).unwrap_err();
        assert!(old.contains("protocol 2"), "{old}");
        assert!(feed_event(bundle_message(vec![], vec![1; 65])).is_err());
        assert!(feed_event(bundle_message(vec![], vec![1; 36])).is_ok());
    }
}
