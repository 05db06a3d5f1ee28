//! The domain model: campaigns, their executions and leases, messages and their states, the
//! outcome of a send. Plain data with the rules that need no I/O (which states are final,
//! which statuses a campaign or an execution can have); the store persists it, `dispatch`
//! changes it, the CLI shows it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::phone::Phone;

/// The states of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Pending,
    Sending,
    /// The gateway may have accepted it (a timeout, a reset, an unreadable answer, a run cut
    /// short): never failed, cancelled or resent until a lookup settles it.
    InDoubt,
    Sent,
    Failed,
    Suppressed,
    Cancelled,
}

impl MessageState {
    pub const ALL: [MessageState; 7] = [
        MessageState::Pending,
        MessageState::Sending,
        MessageState::InDoubt,
        MessageState::Sent,
        MessageState::Failed,
        MessageState::Suppressed,
        MessageState::Cancelled,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Sending => "sending",
            MessageState::InDoubt => "in_doubt",
            MessageState::Sent => "sent",
            MessageState::Failed => "failed",
            MessageState::Suppressed => "suppressed",
            MessageState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<MessageState> {
        MessageState::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Defines a status enum stored as its upper-case name (Spring Batch's BatchStatus words).
macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)+];
            /// The stored text, such as `COMPLETED`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
            /// The status a stored text names; `None` for any other text.
            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_enum! {
    /// Where a campaign (the job instance) stands.
    CampaignStatus {
        /// Created, never run.
        Created = "CREATED",
        /// Created with a time (`--at` or a recurring schedule): `munja serve` starts it then.
        Scheduled = "SCHEDULED",
        /// An execution holds it (or held it and died).
        Started = "STARTED",
        /// Stopped before every message was final; running it again resumes.
        Stopped = "STOPPED",
        Failed = "FAILED",
        /// Every message final.
        Completed = "COMPLETED",
        Cancelled = "CANCELLED",
    }
}

impl CampaignStatus {
    /// Nothing is left to send or cancel (a completed campaign may still re-send its
    /// retryable failures with `--retry-failed`).
    pub fn is_finished(self) -> bool {
        matches!(self, CampaignStatus::Completed | CampaignStatus::Cancelled)
    }
}

status_enum! {
    /// How one execution (one `campaign run`) stands or ended.
    ExecutionStatus {
        Started = "STARTED",
        Stopped = "STOPPED",
        Failed = "FAILED",
        Completed = "COMPLETED",
        /// Its holder died and a later run (or a cancel) closed it.
        Abandoned = "ABANDONED",
    }
}

/// One recipient of a segment, ready to store.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub phone: Phone,
    /// JSON object text of the template variables.
    pub vars: String,
    pub night_consent: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub id: i64,
    pub name: String,
    pub source: String,
    pub columns: Vec<String>,
    pub member_count: i64,
    pub imported_at: String,
}

#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub name: String,
    pub segment_name: String,
    /// `imported_at` of the segment that `campaign create` checked.
    pub segment_imported_at: String,
    pub template_name: String,
    pub template_body: String,
    pub template_subject: Option<String>,
    pub gateway: String,
    pub ad: bool,
    pub sender_number: String,
    pub brand: Option<String>,
    pub optout_number: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Campaign {
    pub id: i64,
    pub uid: String,
    pub name: String,
    pub segment_name: String,
    pub template_name: String,
    pub template_body: String,
    pub template_subject: Option<String>,
    pub gateway: String,
    pub ad: bool,
    pub sender_number: String,
    pub brand: Option<String>,
    pub optout_number: Option<String>,
    /// The stored text of a [`CampaignStatus`] (see [`Campaign::parsed_status`]).
    pub status: String,
    pub exit_message: Option<String>,
    pub created_at: String,
    pub snapshot_at: Option<String>,
    pub total: i64,
    pub stop_requested: bool,
    pub cancel_requested: bool,
    pub lease: Option<Lease>,
    /// When a SCHEDULED campaign is due (RFC 3339).
    pub scheduled_at: Option<String>,
    /// The recurring schedule that created it, if any.
    pub schedule_id: Option<i64>,
}

impl Campaign {
    /// The status as an enum; `None` when the stored text is none of [`CampaignStatus`].
    pub fn parsed_status(&self) -> Option<CampaignStatus> {
        CampaignStatus::parse(&self.status)
    }
}

/// Who holds a campaign's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub execution: i64,
    pub host: String,
    pub pid: i64,
    pub heartbeat_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Execution {
    pub id: i64,
    pub campaign_id: i64,
    /// The stored text of an [`ExecutionStatus`].
    pub status: String,
    pub exit_code: Option<String>,
    pub exit_message: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub host: String,
    pub pid: i64,
    pub read_count: i64,
    pub sent: i64,
    pub failed: i64,
    pub suppressed: i64,
    pub commits: i64,
}

/// Messages per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: i64,
    pub pending: i64,
    pub sending: i64,
    /// Messages the gateway may or may not have: settled by lookup on the next run.
    pub in_doubt: i64,
    pub sent: i64,
    pub failed: i64,
    pub suppressed: i64,
    pub cancelled: i64,
}

impl Counts {
    /// Every message is in a final state (nothing pending, sending or in doubt).
    pub fn all_final(&self) -> bool {
        self.pending == 0 && self.sending == 0 && self.in_doubt == 0
    }
}

/// A message claimed for sending (now in state `sending`).
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: i64,
    pub msg_ref: String,
    pub phone: String,
    pub vars: String,
    pub night_consent: bool,
    pub attempts: i64,
}

/// One recorded request (or lookup) for a message.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub gateway_id: Option<String>,
    pub error: Option<String>,
    pub latency_ms: i64,
}

/// The outcome of one message in a chunk, written by `commit_chunk`.
#[derive(Debug, Clone)]
pub struct MessageUpdate {
    pub id: i64,
    /// `Pending` returns the message to the queue (not attempted, or still retryable after a stop);
    /// `InDoubt` keeps it out of the queue until a lookup settles it.
    pub state: MessageState,
    pub reason: Option<String>,
    pub retryable: bool,
    pub gateway_id: Option<String>,
    pub kind: Option<String>,
    pub bytes: Option<i64>,
    pub attempts: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub seq: i64,
    #[serde(rename = "ref")]
    pub msg_ref: String,
    pub phone: String,
    pub status: String,
    pub attempts: i64,
    pub gateway_id: Option<String>,
    pub error: Option<String>,
    pub last_attempt_at: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub bytes: Option<i64>,
}

/// A recurring schedule, as `munja schedule add` stores it.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub name: String,
    pub segment_name: String,
    pub template_name: String,
    pub gateway: Option<String>,
    pub ad: bool,
    /// 5 or 6 fields (with seconds), read in `policy.timezone`.
    pub cron: String,
}

/// A stored recurring schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub id: i64,
    pub name: String,
    pub segment_name: String,
    pub template_name: String,
    pub gateway: Option<String>,
    pub ad: bool,
    pub cron: String,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
    /// The latest occurrence handled (run or skipped).
    pub last_occurrence_at: Option<DateTime<Utc>>,
}
