//! Planning a campaign: the checks `campaign create` runs before anything is stored, and the
//! preview of what recipients will receive.
//!
//! A campaign snapshots its template, sender and ad frame when it is created, so a later edit of
//! the template file or the config cannot change what an already-created campaign sends.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::config::Config;
use crate::domain::compliance::find_ad_marker;
use crate::domain::consent;
use crate::domain::message::{AdFrame, ComposeError, Composed, Composer};
use crate::domain::model::{NewCampaign, Segment};
use crate::domain::phone;
use crate::domain::sizing::MessageType;
use crate::domain::template::{FRONT_MATTER_LINES, SUBJECT_LINE, TOO_MUCH_WORK, TemplateSource};
use crate::input::segment_sql;
use crate::store::SqlSegment;
use crate::store::Store;

/// Members read per page while checking a segment.
const PAGE: i64 = 5000;

/// What `campaign create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub segment: String,
    pub template: String,
    /// Gateway names from munja.toml, in failover order (empty: the first configured).
    pub gateways: Vec<String>,
    /// Share traffic by each gateway's `weight` instead of failing over in order.
    pub split: bool,
    pub no_ad: bool,
    /// Overrides the template's LMS subject.
    pub subject: Option<String>,
}

/// The result of composing every recipient of a segment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub recipients: u64,
    pub sms: u64,
    pub lms: u64,
    /// Refused messages by reason code.
    pub refused: BTreeMap<String, u64>,
    /// The first few refusals, with the masked number and the full reason.
    pub examples: Vec<String>,
    /// Estimated cost in KRW, when `[pricing]` gives both prices.
    pub estimated_cost_krw: Option<f64>,
    /// Recipients the snapshot suppresses for their ad consent (`consent_expired`, …), by
    /// reason.
    pub suppressed: BTreeMap<String, u64>,
    /// CSV segments: the suppressed are among the recipients composed and counted above (an
    /// SQL segment's are left out of them).
    #[serde(skip)]
    pub suppressed_among_recipients: bool,
    /// SQL segments: source rows that are no recipient (invalid numbers, …), by reason.
    pub rejected_rows: BTreeMap<String, u64>,
    /// SQL segments: the id of the query version the plan was made from.
    #[serde(skip)]
    pub sql_segment: Option<i64>,
}

impl Plan {
    pub fn sendable(&self) -> u64 {
        self.sms + self.lms
    }

    /// The lines printed on stderr by `campaign create`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} recipients: {} SMS, {} LMS, {} refused",
            self.recipients,
            self.sms,
            self.lms,
            self.refused.values().sum::<u64>()
        );
        for (code, n) in &self.refused {
            s.push_str(&format!("\n  refused {code}: {n}"));
        }
        for e in &self.examples {
            s.push_str(&format!("\n  e.g. {e}"));
        }
        for (reason, n) in &self.suppressed {
            s.push_str(&format!(
                "\n  suppressed {reason}: {n} ({})",
                if self.suppressed_among_recipients {
                    "counted as recipients above; the run suppresses them"
                } else {
                    "not counted as recipients"
                }
            ));
        }
        for (reason, n) in &self.rejected_rows {
            s.push_str(&format!("\n  rows rejected {reason}: {n}"));
        }
        if let Some(c) = self.estimated_cost_krw {
            s.push_str(&format!(
                "\nestimated cost: {c:.0} KRW (before opt-out{} suppression)",
                if self.suppressed_among_recipients && !self.suppressed.is_empty() {
                    " and consent"
                } else {
                    ""
                }
            ));
        }
        s
    }
}

/// Resolves the segment or says which ones exist.
pub async fn segment(store: &dyn Store, name: &str) -> anyhow::Result<Segment> {
    match store.segment(name).await? {
        Some(s) => Ok(s),
        None => {
            let names: Vec<String> = store
                .segments()
                .await?
                .into_iter()
                .map(|s| s.name)
                .collect();
            bail!(
                "no segment named {name:?}; import one with `munja segment import {name} FILE.csv` \
                 or define one with `munja segment define {name} --source SRC --query-file F.sql` \
                 (existing segments: {})",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )
        }
    }
}

/// The ad frame from config, validated: brand set, opt-out number a free 080 number.
pub fn ad_frame(cfg: &Config) -> anyhow::Result<AdFrame> {
    let brand = cfg.sender_value("brand")?.trim().to_string();
    let optout = cfg.sender_value("optout_number")?;
    let p = phone::normalize_any(optout).map_err(|e| {
        anyhow::anyhow!(
            "{}: sender.optout_number {optout:?} is not a phone number: {e}",
            cfg.file_label()
        )
    })?;
    if !phone::is_toll_free_080(&p) {
        bail!(
            "{}: sender.optout_number {optout:?} must be a free 080 number (무료수신거부), e.g. \"080-600-5653\"",
            cfg.file_label()
        );
    }
    Ok(AdFrame {
        brand,
        optout_display: phone::format_display(&p),
    })
}

/// Loads a template for an ad or informational campaign and refuses a hand-written ad frame.
pub fn load_template(
    cfg: &Config,
    name: &str,
    ad: bool,
    subject: Option<&str>,
) -> anyhow::Result<TemplateSource> {
    let mut src = TemplateSource::load(&cfg.templates_dir, name)?;
    if ad {
        if let Some(mut m) = find_ad_marker(&src.body) {
            // Body lines are file lines shifted by the front matter.
            if src.subject.is_some() {
                m.line += FRONT_MATTER_LINES;
            }
            bail!("template {name:?}: {m}");
        }
        if let Some(mut m) = src.subject.as_deref().and_then(find_ad_marker) {
            m.line = SUBJECT_LINE;
            bail!("template {name:?} subject: {m}");
        }
        if let Some(m) = subject.and_then(find_ad_marker) {
            bail!(
                "--subject writes its own ad marker {:?}: munja adds the \"(광고) <brand>\" \
                 header and the \"무료수신거부 080-…\" footer itself; remove it",
                m.found
            );
        }
    }
    if let Some(s) = subject {
        src.subject = Some(s.to_string());
    }
    Ok(src)
}

/// Composes every member of `segment` and counts the outcome (streamed page by page).
pub async fn plan(
    store: &dyn Store,
    cfg: &Config,
    composer: &Composer,
    segment: &Segment,
) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let mut after = 0;
    loop {
        let page = store.segment_members(segment.id, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.0;
        for (_, phone_no, vars, _) in &page {
            tally(&mut plan, composer, phone_no, vars)?;
        }
    }
    plan.price(cfg);
    Ok(plan)
}

impl Plan {
    fn price(&mut self, cfg: &Config) {
        if let (Some(s), Some(l)) = (cfg.pricing.sms, cfg.pricing.lms) {
            self.estimated_cost_krw = Some(self.sms as f64 * s + self.lms as f64 * l);
        }
    }
}

/// Composes one recipient's message and counts the outcome.
fn tally(plan: &mut Plan, composer: &Composer, phone_no: &str, vars: &str) -> anyhow::Result<()> {
    plan.recipients += 1;
    match composer.compose_json(vars) {
        Ok(c) if c.kind == MessageType::Sms => plan.sms += 1,
        Ok(_) => plan.lms += 1,
        // A runaway template is the template's fault, not the recipient's: checking
        // the rest of a large segment would only repeat it, slowly.
        Err(e) if e.code == "template_error" && e.message.contains(TOO_MUCH_WORK) => {
            bail!(
                "{} (for recipient {}); nothing was created",
                e.message,
                crate::run::audit::masked(phone_no)
            );
        }
        Err(e) => {
            *plan.refused.entry(e.code.clone()).or_default() += 1;
            if plan.examples.len() < 3 {
                plan.examples.push(format!(
                    "{}: {}",
                    crate::run::audit::masked(phone_no),
                    e.message
                ));
            }
        }
    }
    Ok(())
}

/// Reads an SQL segment's query once (now) and composes every recipient it selects; rejected
/// rows and consent suppressions are counted apart. The snapshot reads it again at the run.
async fn plan_sql(
    cfg: &Config,
    src: &TemplateSource,
    ad: Option<AdFrame>,
    seg: &SqlSegment,
) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let mut composer: Option<Composer> = None;
    let mut failed: Option<anyhow::Error> = None;
    let is_ad = ad.is_some();
    let report = segment_sql::scan(cfg, seg, is_ad, chrono::Utc::now(), &mut |layout, _, r| {
        let Ok(c) = r else { return true };
        if c.suppress.is_some() {
            return true;
        }
        let step = match &composer {
            Some(comp) => tally(&mut plan, comp, c.member.phone.as_str(), &c.member.vars),
            None => match Composer::new(src, ad.clone()) {
                Ok(comp) => {
                    let comp = composer.insert(comp.with_columns(layout.variables.clone()));
                    tally(&mut plan, comp, c.member.phone.as_str(), &c.member.vars)
                }
                Err(e) => Err(e.into()),
            },
        };
        match step {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })
    .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    plan.suppressed = report.suppressed;
    plan.rejected_rows = report.rejected;
    plan.price(cfg);
    Ok(plan)
}

/// The campaign's gateway list as stored (comma-separated, in order): each name must be
/// configured (with its secrets set) and given once; none given means the first configured.
fn gateway_list(cfg: &Config, names: &[String]) -> anyhow::Result<String> {
    if names.is_empty() {
        return Ok(cfg.gateway(None)?.name);
    }
    let mut list: Vec<String> = Vec::new();
    for n in names {
        let g = cfg.gateway(Some(n))?.name;
        if list.contains(&g) {
            bail!("--gateway {g} is given twice; name each gateway once, in failover order");
        }
        list.push(g);
    }
    Ok(list.join(","))
}

/// Checks everything and creates the campaign; returns its id and the plan.
pub async fn create(
    store: &dyn Store,
    cfg: &Config,
    req: &CreateRequest,
) -> anyhow::Result<(i64, Plan)> {
    let (new, plan) = prepare(store, cfg, req).await?;
    let id = store
        .create_campaign(&new)
        .await
        .context("storing the campaign")?;
    link_query(store, id, &plan).await?;
    Ok((id, plan))
}

/// Records on campaign `id` the SQL segment version its plan was made from (nothing for a CSV
/// segment). A campaign that does not know its query must not exist: on failure it is deleted.
pub async fn link_query(store: &dyn Store, id: i64, plan: &Plan) -> anyhow::Result<()> {
    let Some(version) = plan.sql_segment else {
        return Ok(());
    };
    if let Err(e) = store.link_sql_segment(id, version).await {
        let _ = store.delete_campaign(id, None).await;
        return Err(e).context("recording the segment's query on the campaign");
    }
    Ok(())
}

/// Checks everything and returns the campaign to store, with its plan; stores nothing.
pub async fn prepare(
    store: &dyn Store,
    cfg: &Config,
    req: &CreateRequest,
) -> anyhow::Result<(NewCampaign, Plan)> {
    anyhow::ensure!(!req.name.trim().is_empty(), "--name must not be empty");
    let sql = segment_sql::latest(store, &req.segment).await?;
    let segment = match &sql {
        Some(s) => sql_as_segment(s),
        None => segment(store, &req.segment).await?,
    };
    let gateway = gateway_list(cfg, &req.gateways)?;
    if req.split && !gateway.contains(',') {
        bail!("--split shares traffic between gateways: give at least two --gateway NAME");
    }
    let sender = cfg.sender_value("number")?;
    let sender_number = phone::normalize_any(sender)
        .map_err(|e| anyhow::anyhow!("{}: sender.number {sender:?}: {e}", cfg.file_label()))?;
    let ad = if req.no_ad {
        None
    } else {
        Some(ad_frame(cfg)?)
    };
    let src = load_template(cfg, &req.template, ad.is_some(), req.subject.as_deref())?;
    let mut plan = match &sql {
        Some(s) => plan_sql(cfg, &src, ad.clone(), s).await?,
        None => {
            let composer = Composer::new(&src, ad.clone())?.with_columns(segment.columns.clone());
            let mut plan = plan(store, cfg, &composer, &segment).await?;
            plan.suppressed = csv_consent(store, cfg, &segment, ad.is_some()).await?;
            plan.suppressed_among_recipients = true;
            plan
        }
    };
    if plan.sendable() == 0 {
        bail!(
            "no recipient of segment {:?} can be sent this message; nothing was created\n{}",
            segment.name,
            plan.summary()
        );
    }
    let new = NewCampaign {
        name: req.name.clone(),
        segment_name: segment.name.clone(),
        segment_imported_at: segment.imported_at.clone(),
        template_name: src.name.clone(),
        template_body: src.body.clone(),
        template_subject: src.subject.clone(),
        gateway,
        split: req.split,
        ad: ad.is_some(),
        sender_number: sender_number.as_str().to_string(),
        brand: ad.as_ref().map(|a| a.brand.clone()),
        optout_number: ad.as_ref().map(|a| a.optout_display.clone()),
    };
    plan.sql_segment = sql.as_ref().map(|s| s.id);
    Ok((new, plan))
}

/// What the snapshot of an ad (`ad`) on CSV segment `segment` would suppress now for ad
/// consent, by reason. A segment imported before munja kept consent times, whose file had an
/// `ad_consent_at` column, is refused for an ad: its consent ages are unknown until imported
/// again.
async fn csv_consent(
    store: &dyn Store,
    cfg: &Config,
    segment: &Segment,
    ad: bool,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let now = chrono::Utc::now();
    let Some(cutoff) = consent::cutoff(cfg.policy.ad_consent_max_age_days, ad, now) else {
        return Ok(BTreeMap::new());
    };
    if segment.ad_consent_column.is_none()
        && segment
            .columns
            .iter()
            .any(|c| consent::is_consent_column(c))
    {
        bail!(
            "segment {:?} was imported before munja kept the times of its ad_consent_at column, \
             so their age (policy.ad_consent_max_age_days) cannot be checked; import it again \
             (`munja segment import {} FILE.csv`), or create an informational campaign with \
             --no-ad; nothing was created",
            segment.name,
            segment.name
        );
    }
    Ok(store.segment_consent_counts(segment.id, cutoff).await?)
}

/// An SQL segment in the shape `campaign create` records (`imported_at`: its definition time).
fn sql_as_segment(s: &SqlSegment) -> Segment {
    Segment {
        id: 0,
        name: s.name.clone(),
        source: format!("sql:{} v{}", s.source, s.version),
        columns: Vec::new(),
        member_count: 0,
        imported_at: s.defined_at.clone(),
        ad_consent_column: None,
    }
}

/// One previewed message.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewRow {
    pub phone: String,
    pub result: Result<PreviewText, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviewText {
    #[serde(rename = "type")]
    pub kind: String,
    pub bytes: usize,
    pub subject: Option<String>,
    pub text: String,
}

impl From<Composed> for PreviewText {
    fn from(c: Composed) -> Self {
        PreviewText {
            kind: c.kind.as_str().to_string(),
            bytes: c.bytes,
            subject: c.subject,
            text: c.text,
        }
    }
}

/// The final text for the first `limit` members of a segment.
pub async fn preview(
    store: &dyn Store,
    cfg: &Config,
    template: &str,
    segment_name: &str,
    limit: i64,
    no_ad: bool,
) -> anyhow::Result<Vec<PreviewRow>> {
    anyhow::ensure!(limit >= 1, "--limit must be at least 1, got {limit}");
    let ad = if no_ad { None } else { Some(ad_frame(cfg)?) };
    let src = load_template(cfg, template, ad.is_some(), None)?;
    let (members, columns) = match segment_sql::latest(store, segment_name).await? {
        Some(s) => {
            let (members, columns) =
                segment_sql::first_members(cfg, &s, limit as usize, ad.is_some()).await?;
            let members = members
                .into_iter()
                .map(|m| (0, m.phone.as_str().to_string(), m.vars, m.night_consent))
                .collect();
            (members, columns)
        }
        None => {
            let segment = segment(store, segment_name).await?;
            let members = store.segment_members(segment.id, 0, limit).await?;
            (members, segment.columns)
        }
    };
    let composer = Composer::new(&src, ad)?.with_columns(columns);
    Ok(members
        .into_iter()
        .map(|(_, p, vars, _)| PreviewRow {
            phone: crate::run::audit::masked(&p),
            result: composer
                .compose_json(&vars)
                .map(PreviewText::from)
                .map_err(|e: ComposeError| format!("{}: {}", e.code, e.message)),
        })
        .collect())
}
