//! Opt-out lists (수신거부) and CSV segments on SQLite: imports in one write transaction each,
//! invisible until commit (a segment's old members stay readable until then), and their reads.

use super::*;

/// One primary-key probe of the opt-out list.
pub(super) const OPTOUT_CONTAINS: &str = "SELECT COUNT(*) FROM optouts WHERE phone = ?";

/// CROSS JOIN keeps the claimed messages as the outer loop: a walk of the (campaign_id, state)
/// index, one primary-key probe of the list each, however long the list or however many numbers
/// were just imported into it.
pub(super) const FRESH_OPTOUTS_IN_FLIGHT: &str = "SELECT m.phone FROM messages m CROSS JOIN optouts o ON o.phone = m.phone \
     WHERE m.campaign_id = ? AND m.state = 'sending' AND o.created_at >= ?";

struct SqliteImport {
    tx: Transaction<'static, Sqlite>,
    segment_id: Option<i64>,
    next_seq: i64,
    total: i64,
    clock: Clock,
}

#[async_trait]
impl Import for SqliteImport {
    async fn add_optouts(&mut self, phones: &[Phone]) -> Result<ImportCounts> {
        let mut counts = ImportCounts::default();
        let at = ts(self.clock.now());
        for batch in phones.chunks(INSERT_BATCH) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO optouts (phone, source, created_at) ");
            qb.push_values(batch, |mut b, p| {
                b.push_bind(p.as_str().to_string())
                    .push_bind("import")
                    .push_bind(at.clone());
            });
            qb.push(" ON CONFLICT(phone) DO NOTHING");
            let n = qb.build().execute(&mut *self.tx).await?.rows_affected();
            counts.inserted += n;
            counts.already_present += batch.len() as u64 - n;
        }
        Ok(counts)
    }

    async fn add_members(&mut self, members: &[NewMember]) -> Result<ImportCounts> {
        let segment = self
            .segment_id
            .ok_or_else(|| StoreError::Conflict("not a segment import".into()))?;
        let mut counts = ImportCounts::default();
        for batch in members.chunks(INSERT_BATCH) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT OR IGNORE INTO segment_members (segment_id, seq, phone, vars, night_consent) ",
            );
            let start = self.next_seq;
            qb.push_values(batch.iter().enumerate(), |mut b, (i, m)| {
                b.push_bind(segment)
                    .push_bind(start + i as i64)
                    .push_bind(m.phone.as_str().to_string())
                    .push_bind(m.vars.clone())
                    .push_bind(m.night_consent);
            });
            self.next_seq += batch.len() as i64;
            let n = qb.build().execute(&mut *self.tx).await?.rows_affected();
            counts.inserted += n;
            counts.already_present += batch.len() as u64 - n;
            self.total += n as i64;
        }
        Ok(counts)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if let Some(id) = self.segment_id {
            sqlx::query("UPDATE segments SET member_count = ? WHERE id = ?")
                .bind(self.total)
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl ImportStore for SqliteStore {
    async fn begin_optout_import(&self, _source: &str) -> Result<Box<dyn Import>> {
        Ok(Box::new(SqliteImport {
            tx: self.write_tx().await?,
            segment_id: None,
            next_seq: 0,
            total: 0,
            clock: self.clock.clone(),
        }))
    }

    async fn optout_add(&self, phone: &Phone, source: &str) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO optouts (phone, source, created_at) VALUES (?, ?, ?) ON CONFLICT(phone) DO NOTHING",
        )
        .bind(phone.as_str())
        .bind(source)
        .bind(self.now())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn optout_remove(&self, phone: &Phone) -> Result<bool> {
        let r = sqlx::query("DELETE FROM optouts WHERE phone = ?")
            .bind(phone.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn optout_contains(&self, phone: &Phone) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(OPTOUT_CONTAINS)
            .bind(phone.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    async fn optout_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM optouts")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn fresh_optouts_in_flight(
        &self,
        campaign: i64,
        since: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(FRESH_OPTOUTS_IN_FLIGHT)
            .bind(campaign)
            .bind(ts(since))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn begin_segment_import(
        &self,
        name: &str,
        source: &str,
        columns: &[String],
    ) -> Result<Box<dyn Import>> {
        let mut tx = self.write_tx().await?;
        let cols = serde_json::to_string(columns).unwrap_or_else(|_| "[]".into());
        let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM segments WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let id = match existing {
            Some(id) => {
                sqlx::query("DELETE FROM segment_members WHERE segment_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE segments SET source = ?, columns = ?, imported_at = ?, member_count = 0 WHERE id = ?",
                )
                .bind(source)
                .bind(&cols)
                .bind(self.now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
                id
            }
            None => sqlx::query_scalar(
                "INSERT INTO segments (name, source, columns, member_count, imported_at) VALUES (?, ?, ?, 0, ?) RETURNING id",
            )
            .bind(name)
            .bind(source)
            .bind(&cols)
            .bind(self.now())
            .fetch_one(&mut *tx)
            .await?,
        };
        Ok(Box::new(SqliteImport {
            tx,
            segment_id: Some(id),
            next_seq: 1,
            total: 0,
            clock: self.clock.clone(),
        }))
    }

    async fn segment(&self, name: &str) -> Result<Option<Segment>> {
        Ok(self.segments().await?.into_iter().find(|s| s.name == name))
    }

    async fn segments(&self) -> Result<Vec<Segment>> {
        let rows = sqlx::query(
            "SELECT id, name, source, columns, member_count, imported_at FROM segments ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let cols: String = r.try_get("columns")?;
                Ok(Segment {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    source: r.try_get("source")?,
                    columns: serde_json::from_str(&cols).unwrap_or_default(),
                    member_count: r.try_get("member_count")?,
                    imported_at: r.try_get("imported_at")?,
                })
            })
            .collect()
    }

    async fn segment_members(
        &self,
        segment_id: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, bool)>> {
        Ok(sqlx::query_as(
            "SELECT seq, phone, vars, night_consent FROM segment_members \
             WHERE segment_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(segment_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_segment(&self, name: &str) -> Result<SegmentDeletion> {
        let mut tx = self.write_tx().await?;
        let users: Vec<SegmentUser> = sqlx::query_as(
            "SELECT id, name, status FROM campaigns WHERE segment_name = ? \
             AND status NOT IN ('COMPLETED', 'CANCELLED') ORDER BY id",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            return Ok(SegmentDeletion::InUse(users));
        }
        sqlx::query(
            "DELETE FROM segment_members WHERE segment_id IN (SELECT id FROM segments WHERE name = ?)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let csv_members: Option<i64> =
            sqlx::query_scalar("DELETE FROM segments WHERE name = ? RETURNING member_count")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let sql_versions = sqlx::query(
            "UPDATE sql_segments SET deleted_at = ? WHERE name = ? AND deleted_at IS NULL",
        )
        .bind(self.now())
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if csv_members.is_none() && sql_versions == 0 {
            return Ok(SegmentDeletion::NotFound);
        }
        tx.commit().await?;
        Ok(SegmentDeletion::Deleted {
            csv_members,
            sql_versions,
        })
    }
}
