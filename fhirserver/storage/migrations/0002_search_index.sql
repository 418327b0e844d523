-- Search index: typed rows extracted at write time from each SearchParameter's expression,
-- written in the same transaction as the version they describe. One table per parameter type.
-- `grp` ties together the components of one composite match (NULL for plain parameters).
-- Values are stored whole; btree indexes cover their first 256 characters (PostgreSQL limits an
-- index entry to ~2.7 kB), and queries compare that prefix (for the index) and the whole value.

CREATE TABLE search_token (
    res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL, grp smallint,
    system text, code text, text_norm text,
    type_system text, type_code text              -- Identifier.type, for :of-type
);
CREATE INDEX search_token_code ON search_token (res_type, param, left(code, 256), left(system, 256));
CREATE INDEX search_token_owner ON search_token (res_type, res_id);

CREATE TABLE search_string (
    res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL, grp smallint,
    norm text NOT NULL, exact text NOT NULL
);
CREATE INDEX search_string_norm ON search_string (res_type, param, left(norm, 256) text_pattern_ops);
CREATE INDEX search_string_owner ON search_string (res_type, res_id);

CREATE TABLE search_date (
    res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL, grp smallint,
    low timestamptz NOT NULL, high timestamptz NOT NULL            -- [low, high)
);
CREATE INDEX search_date_range ON search_date (res_type, param, low, high);
CREATE INDEX search_date_owner ON search_date (res_type, res_id);

CREATE TABLE search_number (
    res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL, grp smallint,
    low numeric NOT NULL, high numeric NOT NULL, value numeric NOT NULL,
    is_range boolean NOT NULL DEFAULT false        -- a Range: compared as a range, not a point
);
CREATE INDEX search_number_range ON search_number (res_type, param, low, high);
CREATE INDEX search_number_owner ON search_number (res_type, res_id);

CREATE TABLE search_quantity (
    res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL, grp smallint,
    low numeric NOT NULL, high numeric NOT NULL, value numeric NOT NULL,
    system text, code text, unit text,
    is_range boolean NOT NULL DEFAULT false
);
CREATE INDEX search_quantity_range ON search_quantity (res_type, param, low, high);
CREATE INDEX search_quantity_owner ON search_quantity (res_type, res_id);

CREATE TABLE search_reference (
    res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL, grp smallint,
    target_type text, target_id text, url text, version text,
    identifier_system text, identifier_value text
);
CREATE INDEX search_reference_target ON search_reference (res_type, param, target_id, target_type);
CREATE INDEX search_reference_reverse ON search_reference (target_type, target_id, param);
CREATE INDEX search_reference_url ON search_reference (res_type, param, left(url, 256)) WHERE url IS NOT NULL;
CREATE INDEX search_reference_owner ON search_reference (res_type, res_id);

CREATE TABLE search_uri (
    res_type text NOT NULL, res_id text NOT NULL, param text NOT NULL, grp smallint,
    uri text NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (res_type, param, left(uri, 256));
CREATE INDEX search_uri_owner ON search_uri (res_type, res_id);

-- _content (all text of the resource) and _text (the narrative), PostgreSQL full-text search.
-- A tsvector holds at most 1 MB, so very large resources are indexed on their first 300 kB of text.
ALTER TABLE resource
    ADD COLUMN content_fts tsvector GENERATED ALWAYS AS (
        CASE WHEN octet_length(coalesce(body, '{}'::jsonb)::text) < 300000
             THEN jsonb_to_tsvector('simple'::regconfig, coalesce(body, '{}'::jsonb), '["string"]')
             ELSE to_tsvector('simple'::regconfig, left(body::text, 300000)) END) STORED,
    ADD COLUMN text_fts tsvector GENERATED ALWAYS AS
        (to_tsvector('simple'::regconfig, left(coalesce(body -> 'text' ->> 'div', ''), 300000))) STORED;
CREATE INDEX resource_content_fts ON resource USING gin (content_fts);
CREATE INDEX resource_text_fts ON resource USING gin (text_fts);
CREATE INDEX resource_type_updated ON resource (res_type, last_updated);
