//! The gRPC codec of every Entente service: prost, preceded by a walk over the
//! encoded message that bounds what decoding it would allocate.
//!
//! prost decodes a whole message before any handler sees it, and an empty element of
//! a repeated field costs two bytes on the wire but a full struct in memory (an empty
//! `Item` is about 200 bytes decoded: a hundredfold expansion). A size limit alone
//! therefore does not bound memory. Before prost runs, [`check`] walks the message's
//! fields without allocating, counts the elements of every repeated field against its
//! own limit, adds up what they would cost decoded, and refuses the message with
//! `RESOURCE_EXHAUSTED` if a count or the total is over. The shapes below name only
//! the repeated fields; every other field is skipped as bytes.
//!
//! A message that is not well-formed protobuf is refused here too (`INVALID_ARGUMENT`),
//! including the deprecated group wire types, which no Entente message uses.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder};

use crate::crypto::MAX_ITEMS_PER_BUNDLE;
use crate::limits::{self, Limit};

/// The repeated fields of a message type, each with its limits.
#[derive(Debug)]
pub struct Shape {
    /// The message type, for error messages.
    pub name: &'static str,
    /// (field number, what it holds).
    pub fields: &'static [(u32, Field)],
}

/// A field that decoding may multiply.
#[derive(Debug)]
pub enum Field {
    /// A repeated field: at most `max` elements (over all occurrences), each costing
    /// `cost` bytes of memory decoded beyond its encoded bytes; `of` is the element's
    /// shape when the elements are messages with repeated fields of their own.
    Many {
        /// Largest number of elements.
        max: usize,
        /// Bytes of memory per element, decoded.
        cost: usize,
        /// The element's own shape.
        of: Option<&'static Shape>,
    },
    /// A singular message field. prost merges repeated occurrences of it, so the counts
    /// of its repeated fields add up over all occurrences.
    One(&'static Shape),
}

/// What a message type may cost to decode.
pub trait DecodeBudget {
    /// Largest encoded message of this type; `None` leaves it to the service's limit.
    const MAX_BYTES: Option<usize> = None;
    /// Its repeated fields; `None` when it has none that matter.
    const SHAPE: Option<&'static Shape> = None;
    /// Largest total decoded cost of its repeated elements, in bytes.
    const MAX_COST: usize = 64 * 1024 * 1024;
}

/// Why a message was refused before decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not well-formed protobuf.
    Malformed(&'static str),
    /// More bytes than the type allows.
    TooLarge {
        /// The message type.
        message: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A repeated field with more elements than allowed.
    TooMany {
        /// The message type holding the field.
        message: &'static str,
        /// The field number.
        field: u32,
        /// The limit.
        max: usize,
    },
    /// Too much decoded memory over all repeated fields.
    TooCostly {
        /// The message type.
        message: &'static str,
        /// The limit in bytes.
        max: usize,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "malformed message: {why}"),
            Refusal::TooLarge {
                message,
                bytes,
                max,
            } => write!(
                f,
                "a {message} of {bytes} bytes is over this node's limit of {max} bytes"
            ),
            Refusal::TooMany {
                message,
                field,
                max,
            } => write!(
                f,
                "a {message} holds more than {max} elements in field {field}, this node's limit"
            ),
            Refusal::TooCostly { message, max } => write!(
                f,
                "a {message} would take more than {} MiB to decode, this node's limit",
                max / (1024 * 1024)
            ),
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Malformed(_) => Status::invalid_argument(refusal.to_string()),
            _ => {
                limits::count(Limit::DecodeBudget);
                Status::resource_exhausted(refusal.to_string())
            }
        }
    }
}

/// Checks an encoded message of type `M` against its budget, without allocating.
pub fn check<M: DecodeBudget>(bytes: &[u8]) -> Result<(), Refusal> {
    let shape = M::SHAPE;
    if let Some(max) = M::MAX_BYTES.filter(|max| bytes.len() > *max) {
        return Err(Refusal::TooLarge {
            message: shape.map_or("message", |s| s.name),
            bytes: bytes.len(),
            max,
        });
    }
    let Some(shape) = shape else {
        return walk_plain(bytes);
    };
    let mut cost = 0usize;
    let mut counts = vec![0usize; shape.fields.len()];
    walk(bytes, shape, &mut counts, &mut cost, M::MAX_COST, 0)
}

/// Deepest nesting of shapes walked; Entente's messages nest three deep.
const MAX_DEPTH: usize = 8;

fn walk(
    bytes: &[u8],
    shape: &'static Shape,
    counts: &mut [usize],
    cost: &mut usize,
    max_cost: usize,
    depth: usize,
) -> Result<(), Refusal> {
    if depth > MAX_DEPTH {
        return Err(Refusal::Malformed("nested too deep"));
    }
    // Singular message fields merge over occurrences: one set of counts each.
    let mut merged: Vec<Option<Vec<usize>>> = Vec::new();
    let mut reader = Reader { bytes };
    while let Some((number, value)) = reader.next()? {
        let Some(index) = shape.fields.iter().position(|(n, _)| *n == number) else {
            continue;
        };
        match &shape.fields[index].1 {
            Field::Many {
                max,
                cost: each,
                of,
            } => {
                counts[index] += 1;
                if counts[index] > *max {
                    return Err(Refusal::TooMany {
                        message: shape.name,
                        field: number,
                        max: *max,
                    });
                }
                *cost = cost.saturating_add(*each);
                if *cost > max_cost {
                    return Err(Refusal::TooCostly {
                        message: shape.name,
                        max: max_cost,
                    });
                }
                if let Some(element) = of {
                    // Packed scalars never have a shape, so a message element is
                    // always length-delimited.
                    let Value::Bytes(inner) = value else {
                        return Err(Refusal::Malformed(
                            "a message field is not length-delimited",
                        ));
                    };
                    let mut inner_counts = vec![0usize; element.fields.len()];
                    walk(inner, element, &mut inner_counts, cost, max_cost, depth + 1)?;
                }
            }
            Field::One(element) => {
                let Value::Bytes(inner) = value else {
                    return Err(Refusal::Malformed(
                        "a message field is not length-delimited",
                    ));
                };
                if merged.len() < shape.fields.len() {
                    merged.resize(shape.fields.len(), None);
                }
                let inner_counts =
                    merged[index].get_or_insert_with(|| vec![0usize; element.fields.len()]);
                walk(inner, element, inner_counts, cost, max_cost, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// A message with no shape is still walked, so that malformed input is refused the
/// same way for every type.
fn walk_plain(bytes: &[u8]) -> Result<(), Refusal> {
    let mut reader = Reader { bytes };
    while reader.next()?.is_some() {}
    Ok(())
}

/// One field's value as it lies on the wire.
enum Value<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Refusal> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or(Refusal::Malformed("truncated varint"))?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Refusal::Malformed("varint longer than ten bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Refusal> {
        if n > self.bytes.len() {
            return Err(Refusal::Malformed("field runs past the end of the message"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, Refusal> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| Refusal::Malformed("field number"))?;
        if number == 0 {
            return Err(Refusal::Malformed("field number 0"));
        }
        let value = match key & 7 {
            0 => {
                self.varint()?;
                Value::Scalar
            }
            1 => {
                self.take(8)?;
                Value::Scalar
            }
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| Refusal::Malformed("length"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Scalar
            }
            _ => return Err(Refusal::Malformed("unsupported wire type")),
        };
        Ok(Some((number, value)))
    }
}

/// The codec named in `build.rs` for every generated service and client.
pub struct BoundedCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + DecodeBudget + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder {
            inner: self.inner.decoder(),
            _message: PhantomData,
        }
    }
}

/// prost's decoder, after [`check`].
pub struct BoundedDecoder<U> {
    inner: ProstDecoder<U>,
    _message: PhantomData<U>,
}

impl<U: Message + Default + DecodeBudget> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands the decoder exactly one whole message in one contiguous buffer
        // (decompressed first when it came compressed), so `chunk` is all of it.
        use prost::bytes::Buf;
        if buf.chunk().len() != buf.remaining() {
            return Err(Status::internal("message buffer is not contiguous"));
        }
        check::<U>(buf.chunk())?;
        self.inner.decode(buf)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.inner.buffer_settings()
    }
}

/// The one method whose messages may be larger than [`MAX_SMALL_REQUEST_BYTES`]; its
/// own limit is the Intel service's `max_decoding_message_size`.
const LARGE_REQUEST_PATH: &str = "/entente.v1.Intel/Publish";

/// Tower layer that refuses, as it arrives, a request message over
/// [`MAX_SMALL_REQUEST_BYTES`] on every method but `Publish`.
///
/// tonic's size limit is one per service, and the Intel service's must let a `Publish`
/// message through: without this layer a `Query` or `Subscribe` message up to
/// `limits.publish_message_bytes` would be read whole into memory before
/// [`BoundedDecoder`] refused it, and one that never ends would be held as long as its
/// connection. Here each gRPC message's length prefix is read as the body passes, and
/// a message announced over the limit ends the request with `RESOURCE_EXHAUSTED`
/// before any of it is buffered.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmallRequestsLayer;

impl<S> tower::Layer<S> for SmallRequestsLayer {
    type Service = SmallRequests<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SmallRequests { inner }
    }
}

/// See [`SmallRequestsLayer`].
#[derive(Clone, Debug)]
pub struct SmallRequests<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for SmallRequests<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
    B: http_body::Body<Data = prost::bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let large = request.uri().path() == LARGE_REQUEST_PATH;
        let request = request.map(|body| {
            let body = tonic::body::Body::new(body);
            if large {
                body
            } else {
                tonic::body::Body::new(SmallMessages::new(body, MAX_SMALL_REQUEST_BYTES))
            }
        });
        self.inner.call(request)
    }
}

/// A request body passed through unchanged, whose gRPC messages are each at most `max`
/// bytes (read from each message's 5-byte prefix as the bytes go by).
struct SmallMessages {
    inner: tonic::body::Body,
    max: usize,
    /// The prefix of the next message, as far as it has arrived.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to pass.
    remaining: usize,
}

impl SmallMessages {
    fn new(inner: tonic::body::Body, max: usize) -> Self {
        Self {
            inner,
            max,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Follows the message boundaries through `data`; the size of the first message
    /// announced over the limit.
    fn follow(&mut self, mut data: &[u8]) -> Result<(), usize> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > self.max {
                    return Err(len);
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl http_body::Body for SmallMessages {
    type Data = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let frame = match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(bytes) = self.follow(data) {
                let max = self.max;
                return Poll::Ready(Some(Err(Status::from(Refusal::TooLarge {
                    message: "request message",
                    bytes,
                    max,
                }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// Shapes of the messages that carry repeated fields. Costs are the decoded size of one
// element (`size_of` of the struct, or of a `String`/`Vec<u8>` for strings and bytes),
// rounded up; the encoded bytes themselves are already bounded by the message size.

const STRING: usize = 24;

/// `entente.v1.Indicator`.
pub static INDICATOR: Shape = Shape {
    name: "Indicator",
    fields: &[(
        5,
        Field::Many {
            max: crate::model::MAX_KILL_CHAIN_PHASES,
            cost: STRING,
            of: None,
        },
    )],
};

/// `entente.v1.Revocation`: its indicator, decoded into a box of its own.
pub static REVOCATION: Shape = Shape {
    name: "Revocation",
    fields: &[(3, Field::One(&INDICATOR))],
};

/// `entente.v1.Item`.
pub static ITEM: Shape = Shape {
    name: "Item",
    fields: &[
        (
            4,
            Field::Many {
                max: crate::model::MAX_TAGS,
                cost: STRING,
                of: None,
            },
        ),
        (10, Field::One(&INDICATOR)),
        (11, Field::One(&REVOCATION)),
    ],
};

/// `entente.v1.Distribution`.
pub static DISTRIBUTION: Shape = Shape {
    name: "Distribution",
    fields: &[(
        2,
        Field::Many {
            max: crate::model::MAX_RECIPIENTS,
            cost: STRING,
            of: None,
        },
    )],
};

/// Decoded size of one `Item` and the boxed indicator a revocation may carry, rounded up.
const ITEM_COST: usize = 384;

/// `entente.v1.PublishRequest`.
pub static PUBLISH_REQUEST: Shape = Shape {
    name: "PublishRequest",
    fields: &[
        (
            1,
            Field::Many {
                max: MAX_ITEMS_PER_BUNDLE,
                cost: ITEM_COST,
                of: Some(&ITEM),
            },
        ),
        (2, Field::One(&DISTRIBUTION)),
        (
            3,
            Field::Many {
                max: MAX_GROUPS,
                cost: STRING,
                of: None,
            },
        ),
    ],
};

/// Sharing groups one Publish message may name.
pub const MAX_GROUPS: usize = 64;

/// Capabilities one Hello may announce.
pub const MAX_CAPABILITIES: usize = 64;

/// Fingerprints one GetCertificates request may ask for.
pub const MAX_CERTIFICATE_REQUESTS: usize = 64;

/// Requests other than Publish: small, fixed-size messages.
pub const MAX_SMALL_REQUEST_BYTES: usize = 64 * 1024;

static HELLO: Shape = Shape {
    name: "Hello",
    fields: &[(
        3,
        Field::Many {
            max: MAX_CAPABILITIES,
            cost: STRING,
            of: None,
        },
    )],
};

static GET_CERTIFICATES_REQUEST: Shape = Shape {
    name: "GetCertificatesRequest",
    fields: &[(
        1,
        Field::Many {
            max: MAX_CERTIFICATE_REQUESTS,
            cost: STRING,
            of: None,
        },
    )],
};

static CERTIFICATE_CHAIN: Shape = Shape {
    name: "CertificateChain",
    fields: &[(
        2,
        Field::Many {
            max: 16,
            cost: STRING,
            of: None,
        },
    )],
};

static GET_CERTIFICATES_RESPONSE: Shape = Shape {
    name: "GetCertificatesResponse",
    fields: &[(
        1,
        Field::Many {
            max: MAX_CERTIFICATE_REQUESTS,
            cost: 64,
            of: Some(&CERTIFICATE_CHAIN),
        },
    )],
};

use super::proto;

impl DecodeBudget for proto::PublishRequest {
    const SHAPE: Option<&'static Shape> = Some(&PUBLISH_REQUEST);
    // 100,000 items of 256 bytes, their tags and phases: the decoded structs of one
    // message stay within this, whatever it holds.
    const MAX_COST: usize = 48 * 1024 * 1024;
}

impl DecodeBudget for proto::HelloRequest {
    const MAX_BYTES: Option<usize> = Some(MAX_SMALL_REQUEST_BYTES);
    const SHAPE: Option<&'static Shape> = Some(&HELLO);
}

impl DecodeBudget for proto::HelloResponse {
    const MAX_BYTES: Option<usize> = Some(MAX_SMALL_REQUEST_BYTES);
    const SHAPE: Option<&'static Shape> = Some(&HELLO);
}

impl DecodeBudget for proto::GetCertificatesRequest {
    const MAX_BYTES: Option<usize> = Some(MAX_SMALL_REQUEST_BYTES);
    const SHAPE: Option<&'static Shape> = Some(&GET_CERTIFICATES_REQUEST);
}

impl DecodeBudget for proto::GetCertificatesResponse {
    const SHAPE: Option<&'static Shape> = Some(&GET_CERTIFICATES_RESPONSE);
}

/// A pull message holds only scalars and bytes (a bundle travels in parts whose items
/// the puller decodes one at a time, `sync::parts`): bounded by the puller's message
/// size (`sync::limits::MAX_PULL_MESSAGE_BYTES`) alone.
impl DecodeBudget for proto::PullResponse {}

/// Small requests without repeated fields: bounded by size alone.
macro_rules! small_requests {
    ($($t:ty),* $(,)?) => {
        $(impl DecodeBudget for $t {
            const MAX_BYTES: Option<usize> = Some(MAX_SMALL_REQUEST_BYTES);
        })*
    };
}

small_requests!(
    proto::PullRequest,
    proto::QueryRequest,
    proto::GetRequest,
    proto::SubscribeRequest,
    proto::ExportRequest,
    proto::ReloadPolicyRequest,
    proto::ExplainRequest,
    proto::LedgerShowRequest,
    proto::LedgerVerifyRequest,
    proto::LinksRequest,
    proto::LimitsRequest,
    proto::FeedsRequest,
    proto::CertificatesRequest,
    proto::OfferCrlRequest,
    proto::StoreStateRequest,
);

/// Answers that only this node's own CLI and clients decode, from the node they chose
/// to call: bounded by the client's message size limit.
macro_rules! answers {
    ($($t:ty),* $(,)?) => {
        $(impl DecodeBudget for $t {})*
    };
}

answers!(
    proto::PublishResponse,
    proto::QueryResponse,
    proto::GetResponse,
    proto::StoredItem,
    proto::ExportChunk,
    proto::ReloadPolicyResponse,
    proto::ExplainResponse,
    proto::LedgerRecord,
    proto::LedgerVerifyResponse,
    proto::LinksResponse,
    proto::LimitsResponse,
    proto::FeedsResponse,
    proto::CertificatesResponse,
    proto::OfferCrlResponse,
    proto::StoreStateResponse,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn encode<M: Message>(m: &M) -> Vec<u8> {
        m.encode_to_vec()
    }

    #[test]
    fn a_publish_of_empty_items_is_refused_by_count_before_decoding() {
        // 8 MB of two-byte empty items: four million items.
        let bytes: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 4_000_000)
            .flatten()
            .collect();
        let refusal = check::<proto::PublishRequest>(&bytes).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::TooMany {
                message: "PublishRequest",
                field: 1,
                max: MAX_ITEMS_PER_BUNDLE
            }
        );
        // The same number of items, one short of the limit, passes.
        let fine: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], MAX_ITEMS_PER_BUNDLE)
            .flatten()
            .collect();
        check::<proto::PublishRequest>(&fine).unwrap();
    }

    #[test]
    fn tags_are_counted_per_item_and_over_merged_occurrences() {
        let item = wire::Item {
            tags: vec![String::new(); crate::model::MAX_TAGS],
            ..Default::default()
        };
        let one = encode(&proto::PublishRequest {
            items: vec![item.clone()],
            ..Default::default()
        });
        check::<proto::PublishRequest>(&one).unwrap();
        // The item's encoding twice over, inside one item field: prost would merge
        // them into one item with twice the tags.
        let mut item_bytes = encode(&item);
        item_bytes.extend(encode(&item));
        let mut message = vec![0x0a];
        prost::encoding::encode_varint(item_bytes.len() as u64, &mut message);
        message.extend(&item_bytes);
        assert!(matches!(
            check::<proto::PublishRequest>(&message),
            Err(Refusal::TooMany {
                message: "Item",
                field: 4,
                ..
            })
        ));
    }

    #[test]
    fn recipients_add_up_over_repeated_distributions() {
        let distribution = wire::Distribution {
            max_hops: None,
            recipients: vec![String::from("a"); crate::model::MAX_RECIPIENTS],
        };
        let half = encode(&proto::PublishRequest {
            distribution: Some(distribution),
            ..Default::default()
        });
        check::<proto::PublishRequest>(&half).unwrap();
        let mut twice = half.clone();
        twice.extend(&half);
        // Decoded, this is one distribution with twice the recipients.
        let decoded = proto::PublishRequest::decode(twice.as_slice()).unwrap();
        assert_eq!(
            decoded.distribution.unwrap().recipients.len(),
            2 * crate::model::MAX_RECIPIENTS
        );
        assert!(matches!(
            check::<proto::PublishRequest>(&twice),
            Err(Refusal::TooMany {
                message: "Distribution",
                ..
            })
        ));
    }

    #[test]
    fn the_decoded_cost_is_bounded_whatever_the_mix() {
        // Every item at its tag limit: 100,000 × (256 + 32 × 24) bytes is over the
        // budget, so the message is refused although each count is within its limit.
        let item = wire::Item {
            tags: vec![String::new(); crate::model::MAX_TAGS],
            ..Default::default()
        };
        let message = encode(&proto::PublishRequest {
            items: vec![item; MAX_ITEMS_PER_BUNDLE],
            ..Default::default()
        });
        assert!(matches!(
            check::<proto::PublishRequest>(&message),
            Err(Refusal::TooCostly { .. })
        ));
    }

    #[test]
    fn the_costs_cover_the_decoded_structs() {
        // A revocation's indicator is boxed: one more allocation per item at most.
        assert!(
            std::mem::size_of::<wire::Item>() + std::mem::size_of::<wire::Indicator>() <= ITEM_COST
        );
        assert!(std::mem::size_of::<String>() <= STRING);
        assert!(std::mem::size_of::<wire::Disclosure>() <= 64);
        assert!(std::mem::size_of::<proto::CertificateChain>() <= 64);
    }

    #[test]
    fn malformed_input_and_groups_are_refused() {
        for bytes in [
            &[0x0a, 0x05, 0x00][..], // length past the end
            &[0x0b, 0x0c][..],       // a start-group, end-group pair
            &[0x80, 0x80, 0x80][..], // truncated varint key
            &[0x00, 0x00][..],       // field number 0
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
        ] {
            assert!(
                matches!(
                    check::<proto::PublishRequest>(bytes),
                    Err(Refusal::Malformed(_))
                ),
                "{bytes:?}"
            );
            assert!(matches!(
                check::<proto::QueryRequest>(bytes),
                Err(Refusal::Malformed(_))
            ));
        }
    }

    #[test]
    fn message_prefixes_are_followed_across_chunks() {
        let body = SmallMessages::new(tonic::body::Body::empty(), 100);
        let mut frames = Vec::new();
        for len in [0u32, 100, 3, 101] {
            frames.push(0u8);
            frames.extend_from_slice(&len.to_be_bytes());
            frames.extend(std::iter::repeat_n(7u8, len.min(100) as usize));
        }
        // Whatever the chunks, the first message over 100 bytes is found, and only it.
        for chunk in [1, 2, 4, 5, 6, 7, 64, frames.len()] {
            let mut follower = SmallMessages::new(tonic::body::Body::empty(), 100);
            let result = frames.chunks(chunk).try_for_each(|c| follower.follow(c));
            assert_eq!(result, Err(101), "chunks of {chunk}");
        }
        let mut follower = body;
        let fine = frames.len() - 5 - 100;
        assert_eq!(follower.follow(&frames[..fine]), Ok(()));
        assert_eq!(follower.remaining, 0);
        assert_eq!(follower.prefix_len, 0);
    }

    #[test]
    fn small_requests_are_bounded_by_size() {
        let big = proto::QueryRequest {
            page_token: vec![0; MAX_SMALL_REQUEST_BYTES + 1],
            ..Default::default()
        };
        assert!(matches!(
            check::<proto::QueryRequest>(&encode(&big)),
            Err(Refusal::TooLarge { .. })
        ));
    }
}
