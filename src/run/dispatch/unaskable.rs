//! Gateways that cannot be asked whether they have a message (Kannel): which of a campaign's
//! gateways they are, and what a run that has nothing left but messages in doubt there says.
//! Such messages wait for a delivery report or `--resend-in-doubt`; running again without
//! either changes nothing (and records nothing).

impl super::LeasedRun<'_> {
    /// The campaign's gateways that cannot be asked whether they have a message (Kannel), and
    /// whether that is all of them.
    pub(super) fn unaskable(&self) -> Unaskable {
        let kannel = crate::config::GatewayKind::Kannel.as_str();
        let names: Vec<String> = self
            .gateways
            .iter()
            .filter(|g| g.kind == kannel)
            .map(|g| g.name.clone())
            .collect();
        Unaskable {
            all: !names.is_empty() && names.len() == self.gateways.len(),
            names,
        }
    }
}

/// Gateways that cannot be asked about a message: see [`super::LeasedRun::unaskable`].
#[derive(Debug, Default)]
pub(super) struct Unaskable {
    pub(super) names: Vec<String>,
    pub(super) all: bool,
}

/// Why a run that has nothing left but messages in doubt stops, and what settles them.
pub(super) fn in_doubt_message(id: i64, in_doubt: i64, unaskable: &Unaskable) -> String {
    let resend = format!(
        "`munja campaign run {id} --resend-in-doubt` sends them again, at the risk of a duplicate"
    );
    if unaskable.all {
        return format!(
            "{in_doubt} messages are in doubt at gateway {}, which cannot be asked whether it has \
             them: only a delivery report for a message proves it sent (`munja serve` receives \
             them at /v1/dlr/NAME), so running again changes nothing until reports arrive; \
             {resend}",
            unaskable.names.join(", ")
        );
    }
    let kannel = if unaskable.names.is_empty() {
        String::new()
    } else {
        format!(
            " (gateway {} can never be asked: only its delivery reports prove a message sent)",
            unaskable.names.join(", ")
        )
    };
    format!(
        "{in_doubt} messages are in doubt: the gateway could not be asked whether it has them; \
         run it again to settle them by lookup{kannel}; {resend}"
    )
}
