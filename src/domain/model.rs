//! The domain model: campaigns, their executions and leases, messages and their states, the
//! outcome of a send. Plain data with the rules that need no I/O (which states are final,
//! which statuses a campaign or an execution can have); the store persists it, `dispatch`
//! changes it, the CLI shows it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::phone::Phone;

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
    /// When the recipient last gave ad consent (CSV `ad_consent_at`); `None` when the cell is
    /// empty or there is no such column.
    pub ad_consent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub id: i64,
    pub name: String,
    pub source: String,
    pub columns: Vec<String>,
    pub member_count: i64,
    pub imported_at: String,
    /// Whether the file had an `ad_consent_at` column (its ads are checked for consent age);
    /// `None` for a segment imported before munja stored consent times (import it again).
    pub ad_consent_column: Option<bool>,
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
    /// The campaign's gateways, comma-separated, in failover order.
    pub gateway: String,
    /// Share traffic by the gateways' `weight` instead of failing over in order.
    pub split: bool,
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
    /// The campaign's gateways, comma-separated, in failover order.
    pub gateway: String,
    pub split: bool,
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
    /// The campaign's gateway names, in order.
    pub fn gateways(&self) -> Vec<&str> {
        self.gateway.split(',').filter(|g| !g.is_empty()).collect()
    }

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
    /// The holder's [`Process::identity`], when it recorded one.
    pub process: Option<String>,
    /// The latest heartbeat of any of the execution's workers (database clock).
    pub heartbeat_at: DateTime<Utc>,
}

/// The process a worker runs in, as recorded in its lease and worker row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub host: String,
    pub pid: i64,
    /// Boot id, pid namespace and start time of the process (`None` where `/proc` cannot tell):
    /// with them, a process on the same kernel and in the same pid namespace is known to be
    /// gone when no process with that pid and start time exists (see `lease::Process`).
    pub identity: Option<String>,
}

/// A worker's fencing token: every write it makes is checked against it. A worker is one
/// `campaign run` process working for the campaign's execution (Spring Batch's step execution
/// of a partitioned step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WorkerToken {
    pub campaign: i64,
    pub execution: i64,
    pub worker: i64,
}

/// How a worker enlists in a campaign's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enlist {
    /// Starts a new execution holding the lease, if the lease is still `expected` (compare and
    /// swap). The previous holder's execution and workers, if any, are closed as ABANDONED with
    /// `abandon_message`. With several workers, `judged_workers` lists the STARTED workers of
    /// the campaign read before its holder was judged gone: the store refuses (a conflict, to
    /// judge again) when `expected` has a STARTED worker that is not in it, one that joined
    /// after the judgement and must not lose its execution to the takeover.
    New {
        expected: Option<i64>,
        abandon_message: String,
        judged_workers: Vec<i64>,
    },
    /// Joins the live execution `execution` as one more worker (stores with several workers).
    Join { execution: i64 },
}

/// A worker as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRecord {
    pub id: i64,
    pub execution_id: i64,
    /// The stored text of an [`ExecutionStatus`].
    pub status: String,
    pub exit_message: Option<String>,
    pub host: String,
    pub pid: i64,
    pub process: Option<String>,
    pub started_at: String,
    pub heartbeat_at: String,
    pub ended_at: Option<String>,
    pub read_count: i64,
    pub sent: i64,
    pub failed: i64,
    pub suppressed: i64,
    pub commits: i64,
}

/// What a rescue of dead workers' claims found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Workers found dead and closed as ABANDONED.
    pub workers: u64,
    /// Their `sending` messages, now in doubt for the rescuer to settle by lookup.
    pub messages: u64,
    /// Messages other live workers of the campaign have claimed and not yet committed.
    pub others_sending: i64,
    /// Other STARTED workers silent for a third of the lease timeout: probably dead, rescued
    /// once the timeout has passed.
    pub others_silent: i64,
    /// Other workers still STARTED (alive, or dead and not yet rescued).
    pub others_started: i64,
    /// Of those, the ones with a lower id than the caller that beat within a third of the
    /// lease timeout: a worker whose queue ran dry leaves the end of the execution to the
    /// lowest live one, which waits for the rest to end or be rescued.
    pub lower_alive: i64,
    /// Milliseconds since the latest heartbeat of a STARTED worker with a lower id than the
    /// caller (database clock), if there is one: a dry worker leaves once a lower one has beaten
    /// since it ran dry, so a worker that died before then does not pass for live.
    pub lower_beat_age_ms: Option<i64>,
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
    /// Sent messages the carrier reported delivered (a delivery state, not a send state).
    pub delivered: i64,
    /// Sent messages the carrier reported not delivered.
    pub undelivered: i64,
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
    /// The gateway its last request went to, when one was recorded.
    pub gateway: Option<String>,
    /// Only from `in_doubt`: for a message recorded `in_doubt`, when its last attempt (request
    /// or lookup) was recorded, a bound on when the gateway may have taken it; `None` for one
    /// an earlier run left `sending` (its last request was never recorded).
    pub in_doubt_at: Option<DateTime<Utc>>,
}

/// One recorded request (or lookup) for a message.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub gateway_id: Option<String>,
    /// The configured name of the gateway it went to.
    pub gateway: Option<String>,
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
    /// The gateway of its last request (kept when `None`).
    pub gateway: Option<String>,
    pub kind: Option<String>,
    pub bytes: Option<i64>,
    pub attempts: Vec<AttemptRecord>,
}

impl MessageUpdate {
    /// The requests among its attempts that may have handed it to the gateway: a lookup is not
    /// a send, except one that finds the crashed run's send.
    pub fn sends(&self) -> i64 {
        self.attempts
            .iter()
            .filter(|a| !a.outcome.starts_with("lookup") || a.outcome == "lookup_found")
            .count() as i64
    }
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
    /// The gateway (its configured name) the message's last request went to.
    pub gateway: Option<String>,
    pub gateway_id: Option<String>,
    pub error: Option<String>,
    pub last_attempt_at: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub bytes: Option<i64>,
    /// `delivered`, `undelivered`, or none (no final delivery report yet).
    pub delivery: Option<String>,
    /// The carrier's result code of the delivery report.
    pub delivery_code: Option<String>,
    /// When the carrier delivered it (or gave up).
    pub delivered_at: Option<String>,
}

/// What the carrier finally said about a sent message (its delivery report), separate from the
/// send state: `sent` means a gateway accepted it, `delivered` that the handset got it.
/// Both values are final: once one is recorded, no later report changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Delivered,
    Undelivered,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Undelivered => "undelivered",
        }
    }
    pub fn parse(s: &str) -> Option<DeliveryState> {
        [DeliveryState::Delivered, DeliveryState::Undelivered]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// What one report says: a final state, or a step on the way (Kannel's "buffered" or "SMSC
/// accepted", NHN's "duplicated") that is logged but never changes a message's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    Final(DeliveryState),
    Intermediate,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Final(d) => d.as_str(),
            ReportStatus::Intermediate => "intermediate",
        }
    }
}

/// One delivery report, whatever gateway kind it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The gateway name (munja.toml) the report came through.
    pub gateway: String,
    /// munja's message ref (the idempotency key the gateway was given).
    pub msg_ref: String,
    pub status: ReportStatus,
    /// The carrier's or gateway's result code (NHN `resultCode`, Kannel's SMSC reply, ...).
    pub code: Option<String>,
    /// When the carrier says it happened (the receive time), else when munja got the report.
    pub at: DateTime<Utc>,
}

/// What recording a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryEffect {
    /// The message had no final delivery state; now it has this one.
    Applied,
    /// The message already had this very state and code (a report sent twice).
    Duplicate,
    /// The message already had a different final state: kept, the report only logged.
    Ignored,
    /// A step on the way: logged, the message's delivery state is unchanged.
    Intermediate,
    /// No message has this ref (a typo, another system's ref, a deleted campaign): logged.
    Unknown,
}

impl DeliveryEffect {
    pub const ALL: [DeliveryEffect; 5] = [
        DeliveryEffect::Applied,
        DeliveryEffect::Duplicate,
        DeliveryEffect::Ignored,
        DeliveryEffect::Intermediate,
        DeliveryEffect::Unknown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryEffect::Applied => "applied",
            DeliveryEffect::Duplicate => "duplicate",
            DeliveryEffect::Ignored => "ignored",
            DeliveryEffect::Intermediate => "intermediate",
            DeliveryEffect::Unknown => "unknown",
        }
    }
    pub fn parse(s: &str) -> Option<DeliveryEffect> {
        DeliveryEffect::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Reports received, by what they did (the `delivery_reports` log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReportCounts {
    pub applied: i64,
    pub duplicate: i64,
    pub ignored: i64,
    pub intermediate: i64,
    /// Reports for refs no message has.
    pub unknown: i64,
}

/// One logged report of a message (oldest first), as `DeliveryStore::delivery_reports` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredReport {
    pub gateway: String,
    pub status: String,
    pub code: Option<String>,
    pub reported_at: String,
    pub effect: String,
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

/// The outcome code (and message reason) of a send the gateway refused because the recipient
/// opted out.
pub const OPTED_OUT: &str = "opted_out";
