//! Domain errors to `tonic::Status`, in one place. Internal detail is logged, not sent.

use tonic::Status;

use crate::engine::EngineError;
use crate::transport::{Cause, Withdrawal};

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
            EngineError::Store(crate::store::StoreError::ConflictingBundle(id)) => {
                Status::already_exists(format!("bundle {id} conflicts with a stored bundle"))
            }
            EngineError::Store(crate::store::StoreError::BadCursor) => {
                Status::invalid_argument("invalid page token: not one this node handed out")
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal error; see the node's log")
            }
        }
    }
}
