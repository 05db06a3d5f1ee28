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
        gateway: item.gateway.clone(),
        kind: Some(item.kind.clone()),
        attempts: item.attempts.clone(),
        ..final_update(item, state, reason, retryable, gateway_id)
    }
}

/// [`update_for`] of an item that is done: its gateway, kind and attempts move into the update.
pub(super) fn update_from(
    mut item: Item,
    state: MessageState,
    reason: Option<String>,
    gateway_id: Option<String>,
) -> MessageUpdate {
    MessageUpdate {
        gateway: item.gateway.take(),
        kind: Some(take(&mut item.kind)),
        attempts: take(&mut item.attempts),
        ..final_update(&item, state, reason, false, gateway_id)
    }
}

/// The update of `item` without its gateway, kind and attempts.
fn final_update(
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
        gateway: None,
        kind: None,
        bytes: Some(item.bytes),
        attempts: Vec::new(),
    }
}
