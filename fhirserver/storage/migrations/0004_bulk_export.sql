-- Bulk Data $export (docs/bulk-export.md).
--
-- Consistency: every version row records the id of the PostgreSQL transaction that wrote it (`xact`, xid8).
-- A kick-off records pg_current_snapshot(); a row belongs to the export when its writer is visible in that
-- snapshot (pg_visible_in_snapshot), which is commit order, not the order of `txid` (a sequence value taken
-- before a slow commit can become visible after larger ones) and not wall-clock time. NULL `xact`: a row
-- written before this migration, committed before any snapshot recorded from now on.
ALTER TABLE resource_history ADD COLUMN xact xid8;
ALTER TABLE resource_history ALTER COLUMN xact SET DEFAULT pg_current_xact_id();
ALTER TABLE resource ADD COLUMN xact xid8;
ALTER TABLE resource ALTER COLUMN xact SET DEFAULT pg_current_xact_id();

-- The current row is updated in place (INSERT ... ON CONFLICT DO UPDATE): stamp the writer there too.
CREATE FUNCTION resource_stamp_xact() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.xact := pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE TRIGGER resource_stamp_xact BEFORE UPDATE ON resource
    FOR EACH ROW EXECUTE FUNCTION resource_stamp_xact();

-- Rows not visible in a snapshot have xact >= its xmin: incremental (_since) exports and the rows changed
-- during an export are found by a range scan instead of a scan of the whole type.
CREATE INDEX resource_type_xact ON resource (res_type, xact);

-- Every kick-off's transactionTime and snapshot, kept after the job expires: a later `_since` equal to that
-- transactionTime is cut by the snapshot, so writes that committed late are not missed.
CREATE TABLE export_checkpoint (
    transaction_time timestamptz PRIMARY KEY,
    snapshot         pg_snapshot NOT NULL
);

CREATE TABLE export_job (
    id               text        PRIMARY KEY,           -- random, unguessable
    owner            text        NOT NULL,              -- the client identity that kicked it off
    queue            text        NOT NULL,              -- only workers of this queue take it
    level            text        NOT NULL CHECK (level IN ('system', 'patient', 'group')),
    request_url      text        NOT NULL,
    spec             jsonb       NOT NULL,              -- the validated kick-off parameters
    patients         text[],                            -- Patient ids the export is limited to (NULL: no limit)
    directory        text        NOT NULL,              -- where every worker writes this job's files
    gzip             boolean     NOT NULL,
    file_bytes       bigint      NOT NULL,
    transaction_time timestamptz NOT NULL,
    snapshot         pg_snapshot NOT NULL,
    since_snapshot   pg_snapshot,                       -- `_since` matched an earlier transactionTime
    state            text        NOT NULL DEFAULT 'accepted'
                     CHECK (state IN ('accepted', 'running', 'completed', 'failed')),
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    expires_at       timestamptz,
    polled_at        timestamptz
);
CREATE INDEX export_job_accepted ON export_job (queue, created_at) WHERE state = 'accepted';
CREATE INDEX export_job_expiry ON export_job (expires_at) WHERE expires_at IS NOT NULL;

-- The units of work: one resource type (or an id range of a large type), the deleted list, the messages.
-- A worker claims a part with FOR UPDATE SKIP LOCKED and holds it by renewing `lease_until`; a part whose
-- lease lapsed is taken over with the next `attempt`, and only that attempt's files can complete it.
CREATE TABLE export_part (
    job_id      text        NOT NULL REFERENCES export_job (id) ON DELETE CASCADE,
    seq         integer     NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('output', 'deleted', 'error')),
    res_type    text        NOT NULL,
    low_id      text,                                   -- (low_id, high_id]; NULL: unbounded
    high_id     text,
    estimate    bigint      NOT NULL DEFAULT 0,
    state       text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
    attempt     integer     NOT NULL DEFAULT 0,
    worker      text,
    lease_until timestamptz,
    progress    bigint      NOT NULL DEFAULT 0,
    files       jsonb       NOT NULL DEFAULT '[]',      -- [{"name", "count", "bytes"}] once done
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX export_part_open ON export_part (job_id, seq) WHERE state <> 'done';
