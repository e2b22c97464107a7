-- 👍/👎 on answers (SPEC §4, §5, §7): one row per (turn, user); a second click
-- replaces the value. `message_id` is the platform message that carried the buttons
-- (the answer's last), which is how the history finds an answer's feedback.
-- Additive; old replicas ignore it.
CREATE TABLE feedback (
    turn_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    platform   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    positive   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (turn_id, user_id)
);
CREATE INDEX feedback_message ON feedback (channel, message_id);
