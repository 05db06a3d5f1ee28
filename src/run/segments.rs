//! Deleting a segment, CSV or SQL (`munja segment delete`, `DELETE /v1/segments/{name}`): what
//! is deleted, and the refusal, naming them, while unfinished campaigns were created from it.
//! (Imports are [`crate::input::import`]'s, SQL definitions [`crate::input::segment_sql`]'s.)

use crate::store::{SegmentDeletion, SegmentUser, Store, StoreError};

/// What a deletion removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    pub name: String,
    /// The CSV segment's recipients, deleted with it; `None`: no CSV segment had the name.
    pub csv_members: Option<i64>,
    /// SQL segment versions taken off the lists (kept for the campaigns that ran them).
    pub sql_versions: u64,
}

impl Deleted {
    /// One line for the operator, e.g. `segment vip deleted: CSV, 3 recipients`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.csv_members {
            parts.push(format!("CSV, {n} recipients"));
        }
        if self.sql_versions > 0 {
            parts.push(format!(
                "SQL, {} versions (kept only for the campaigns created from them)",
                self.sql_versions
            ));
        }
        format!("segment {} deleted: {}", self.name, parts.join("; "))
    }
}

/// Deletes segment `name`. Refused, deleting nothing, with [`StoreError::Conflict`] naming the
/// campaigns while one that is not COMPLETED or CANCELLED was created from it; an unknown name
/// is [`StoreError::NotFound`].
pub async fn delete(store: &dyn Store, name: &str) -> anyhow::Result<Deleted> {
    match store.delete_segment(name).await? {
        SegmentDeletion::Deleted {
            csv_members,
            sql_versions,
        } => Ok(Deleted {
            name: name.to_string(),
            csv_members,
            sql_versions,
        }),
        SegmentDeletion::InUse(users) => Err(StoreError::Conflict(in_use(name, &users)).into()),
        SegmentDeletion::NotFound => Err(StoreError::NotFound(format!(
            "no segment named {name:?} (`munja segment list` shows the existing ones)"
        ))
        .into()),
    }
}

/// The refusal: every unfinished campaign on the segment, and what to do about them.
fn in_use(name: &str, users: &[SegmentUser]) -> String {
    let list: Vec<String> = users
        .iter()
        .map(|u| format!("{} ({}, {})", u.id, u.name, u.status))
        .collect();
    format!(
        "segment {name:?} is used by unfinished campaign{} {}: nothing was deleted. Let them \
         finish (`munja campaign run ID`), cancel them (`munja campaign cancel ID`) or delete \
         them (`munja campaign delete ID`) first",
        if users.len() == 1 { "" } else { "s" },
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_every_campaign_and_the_way_out() {
        let users = [
            SegmentUser {
                id: 3,
                name: "spring".into(),
                status: "STOPPED".into(),
            },
            SegmentUser {
                id: 5,
                name: "summer".into(),
                status: "SCHEDULED".into(),
            },
        ];
        let m = in_use("vip", &users);
        assert!(
            m.starts_with(
                "segment \"vip\" is used by unfinished campaigns 3 (spring, STOPPED), \
                 5 (summer, SCHEDULED): nothing was deleted"
            ),
            "{m}"
        );
        assert!(m.contains("munja campaign cancel ID"), "{m}");
    }

    #[test]
    fn the_summary_says_what_went() {
        let d = Deleted {
            name: "vip".into(),
            csv_members: Some(3),
            sql_versions: 0,
        };
        assert_eq!(d.summary(), "segment vip deleted: CSV, 3 recipients");
    }
}
