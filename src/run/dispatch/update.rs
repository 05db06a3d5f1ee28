//! The update a message's outcome is committed as ([`MessageUpdate`]): copied from an item
//! still on its way, or moved out of one that is done (no copy of its attempts).

use std::mem::take;

use super::sender::Item;
use crate::domain::model::{MessageState, MessageUpdate};

/// The update of `item` as it stands (it may go on: its gateway, kind and attempts are copied).
pub(super) fn update_for(
    item: &Item,
    state: MessageState,
    reason: Option<String>,
    retryable: bool,
    gateway_id: Option<String>,
) -> MessageUpdate {
    MessageUpdate {
        id: item.id,
        state,
        reason,
        retryable,
        gateway_id,
        gateway: item.gateway.clone(),
        kind: Some(item.kind.clone()),
        bytes: Some(item.bytes),
        attempts: item.attempts.clone(),
    }
}

/// [`update_for`] of an item that is done: its gateway, kind and attempts move into the update
/// (what is left to copy is empty, so nothing is allocated twice).
pub(super) fn update_from(
    mut item: Item,
    state: MessageState,
    reason: Option<String>,
    gateway_id: Option<String>,
) -> MessageUpdate {
    let (gateway, kind, attempts) = (
        item.gateway.take(),
        take(&mut item.kind),
        take(&mut item.attempts),
    );
    MessageUpdate {
        gateway,
        kind: Some(kind),
        attempts,
        ..update_for(&item, state, reason, false, gateway_id)
    }
}
