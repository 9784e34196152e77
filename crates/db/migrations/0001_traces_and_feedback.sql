-- Every served request leaves one row (audit = 0); an audit of it, the same request run to its
-- natural end with a probe at every checkpoint, leaves a second (audit = 1). `body` is the trace
-- as a v1 JSON line; the other columns are what queries filter and join on. Integers are BIGINT
-- and flags 0/1 so that SQLite and Postgres read back the same types.
CREATE TABLE traces (
    response_id TEXT NOT NULL,
    audit BIGINT NOT NULL,
    route TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    policy_version TEXT NOT NULL,
    stopped_at BIGINT,
    complete BIGINT NOT NULL,
    delivered_tokens BIGINT NOT NULL,
    generated_tokens BIGINT NOT NULL,
    answer TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (response_id, audit)
);
CREATE INDEX traces_by_route_and_time ON traces (route, started_ms);

-- What a client said about a response. A later post for the same id replaces the fields it
-- gives and keeps the others. `rating` is the number's decimal text: sqlx's Any driver sends a
-- null float to Postgres in a form it refuses.
CREATE TABLE feedback (
    response_id TEXT PRIMARY KEY,
    gold TEXT,
    correct BIGINT,
    rating TEXT,
    received_ms BIGINT NOT NULL
);
