-- Named leases shared by replicas (SPEC §4, §8): each Discord shard runs on one
-- replica at a time (`discord-shard:{n}`), live replicas announce themselves
-- (`discord-replica:{id}`), and IDENTIFYs keep to Discord's pace
-- (`discord-identify:{bucket}`). A lease is held by `owner` until `expires_at`
-- (unix ms); past it, anyone may take it. A handful of rows, read whole. Additive.
CREATE TABLE leases (
    name       TEXT NOT NULL PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at BIGINT NOT NULL
) WITHOUT ROWID;
