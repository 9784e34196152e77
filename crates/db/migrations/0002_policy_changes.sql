-- Every change of a route's active setting (fallback, promotion) and every proposal, with the
-- evidence for it, as the JSON object the server logged.
CREATE TABLE policy_changes (
    id BIGINT NOT NULL,
    route TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (route, at_ms, id)
);
