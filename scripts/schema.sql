-- engage's source tables in PostgreSQL (DESIGN.md section 1). Idempotent.
CREATE TABLE IF NOT EXISTS content(content_id int PRIMARY KEY, content_type text, length_seconds int NULL, title text);
CREATE TABLE IF NOT EXISTS engagement_events(event_id bigserial PRIMARY KEY, content_id int, user_id int, event_type text, event_ts timestamp NOT NULL DEFAULT now(), duration_ms int NULL, device text);
CREATE INDEX IF NOT EXISTS engagement_events_ts_id ON engagement_events(event_ts, event_id); -- backfill's keyset order
