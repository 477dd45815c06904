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
            FeedEnd::Changed => Status::aborted(
                "a bundle being sent changed while it waited to be read; pull again",
            ),
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
            e @ (EngineError::TooManyStreams { .. }
            | EngineError::TooManyPublishes { .. }
            | EngineError::TooManyUnsentAnswers { .. }
            | EngineError::TransferTooLarge { .. }) => Status::resource_exhausted(e.to_string()),
            EngineError::PageToken(
                e @ (crate::policy::PageTokenError::Invalid | crate::policy::PageTokenError::Stale),
            ) => Status::invalid_argument(e.to_string()),
            EngineError::Store(crate::store::StoreError::ConflictingBundle(id)) => {
                Status::already_exists(format!("bundle {id} conflicts with a stored bundle"))
            }
            // A full disk: plain words for the caller, who can do nothing but wait or
            // tell the operator; the detail goes to the log.
            EngineError::Store(e) if e.is_disk_full() => {
                tracing::error!(error = %e, "store write refused");
                Status::resource_exhausted(
                    "the store's disk is full: writes are refused until the operator frees space",
                )
            }
            EngineError::Store(e) if e.is_io() => {
                tracing::error!(error = %e, "store write refused");
                Status::unavailable("the store cannot write to its disk now; see the node's log")
            }
            EngineError::LedgerUnavailable {
                disk_full: true, ..
            } => Status::resource_exhausted(
                "the store's disk is full: deliveries are refused until the operator frees space, since each must be recorded in the disclosure ledger first",
            ),
            EngineError::LedgerUnavailable { reason, .. } => {
                tracing::error!(%reason, "delivery refused");
                Status::unavailable(
                    "deliveries are refused while the disclosure ledger cannot be written; see the node's log",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal error; see the node's log")
            }
        }
    }
}
