//! Domain errors to `tonic::Status`, in one place. Internal detail is logged, not sent.

use tonic::Status;

use crate::engine::EngineError;
use crate::sync::FeedEnd;
use crate::transport::{Cause, Withdrawal};

impl From<FeedEnd<Withdrawal>> for Status {
    fn from(end: FeedEnd<Withdrawal>) -> Self {
        match end {
            FeedEnd::Shutdown => Status::unavailable("node is shutting down"),
            FeedEnd::Withdrawn(withdrawal) => Status::from(withdrawal),
            FeedEnd::Engine(error) => Status::from(error),
            FeedEnd::Task(e) => Status::internal(format!("task failed: {e}")),
            FeedEnd::PolicyChanged => Status::aborted(
                "the sharing policy for this partner changed; pull again to be served under the policy now in force",
            ),
        }
    }
}

impl From<Withdrawal> for Status {
    fn from(withdrawal: Withdrawal) -> Self {
        match withdrawal.cause {
            Cause::Expired => Status::unauthenticated(withdrawal.to_string()),
            Cause::Configuration | Cause::Revoked | Cause::Untrusted => {
                Status::permission_denied(withdrawal.to_string())
            }
        }
    }
}

impl From<EngineError> for Status {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Verify(e) => Status::invalid_argument(format!("bundle rejected: {e}")),
            EngineError::Refused(why) => {
                Status::failed_precondition(format!("bundle refused: {why}"))
            }
            EngineError::Unpublishable(why) => Status::invalid_argument(why),
            e @ (EngineError::TooManyStreams { .. } | EngineError::TooManyPublishes { .. }) => {
                Status::resource_exhausted(e.to_string())
            }
            EngineError::PageToken(e @ crate::policy::PageTokenError::Invalid) => {
                Status::invalid_argument(e.to_string())
            }
            EngineError::Store(crate::store::StoreError::ConflictingBundle(id)) => {
                Status::already_exists(format!("bundle {id} conflicts with a stored bundle"))
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal error; see the node's log")
            }
        }
    }
}
