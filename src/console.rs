//! The terminal chat: each stdin line is a message to the relay, each answer is
//! printed to stdout. It goes through the very same relay, commands and store as
//! Discord and Slack — the console is just another `ChatSink` — so it is the quickest
//! way to try the bridge, with the built-in echo agent and no tokens at all.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::core::error::Detail;
use crate::core::ports::{AnswerFeed, ChatSink, SinkError};
use crate::core::relay::Rejected;
use crate::core::{Inbound, Platform, Relay};

/// Writes answers to the console's output. Shared by every turn; the mutex keeps one
/// answer's lines together.
struct ConsoleSink<W> {
    out: Arc<Mutex<W>>,
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send + 'static> ChatSink for ConsoleSink<W> {
    async fn send(&self, text: &str) -> Result<Vec<String>, SinkError> {
        let mut out = self.out.lock().await;
        let line = format!("agent> {text}\n");
        out.write_all(line.as_bytes())
            .await
            .map_err(|e| SinkError(Detail::from_error(e)))?;
        out.flush()
            .await
            .map_err(|e| SinkError(Detail::from_error(e)))?;
        Ok(vec![])
    }

    /// Prints the answer as it is written: each new piece as it arrives, on one
    /// `agent> ` line.
    async fn stream(&self, mut feed: AnswerFeed) -> Result<Vec<String>, SinkError> {
        let mut out = self.out.lock().await;
        let io = |e: std::io::Error| SinkError(Detail::from_error(e));
        out.write_all(b"agent> ").await.map_err(io)?;
        let mut printed = String::new();
        loop {
            let done = feed.text.changed().await.is_err();
            let text = feed.text.borrow_and_update().clone();
            let fresh = match text.strip_prefix(printed.as_str()) {
                Some(rest) => rest.to_string(),
                // The final text is not what was shown (never expected): show it whole.
                None => format!("\n{text}"),
            };
            out.write_all(fresh.as_bytes()).await.map_err(io)?;
            out.flush().await.map_err(io)?;
            printed = text;
            if done {
                break;
            }
        }
        out.write_all(b"\n").await.map_err(io)?;
        out.flush().await.map_err(io)?;
        Ok(vec![])
    }
}

/// Options for [`run`].
pub struct ConsoleOptions {
    /// Print a `you> ` prompt before each line (when stdin is a terminal).
    pub prompt: bool,
    /// How long to wait for the last answers after input ends.
    pub grace: Duration,
}

/// Reads messages from `input` until it ends, `exit`/`quit`, or `shutdown`; each is
/// answered before the next is read, like a conversation.
pub async fn run<R, W>(
    relay: Relay,
    input: R,
    output: W,
    options: ConsoleOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let out = Arc::new(Mutex::new(output));
    let sink: Arc<dyn ChatSink> = Arc::new(ConsoleSink { out: out.clone() });
    write(
        &out,
        "agent-bridge console: type a message, `help` for commands, Ctrl-D to quit.\n",
    )
    .await?;
    let mut lines = input.lines();
    let mut count: u64 = 0;
    loop {
        if options.prompt {
            write(&out, "you> ").await?;
        }
        let line = tokio::select! {
            line = lines.next_line() => line?,
            _ = shutdown.cancelled() => None,
        };
        let Some(line) = line else { break };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if matches!(text, "exit" | "quit") {
            break;
        }
        count += 1;
        let msg = Inbound {
            platform: Platform::Console,
            workspace: "local".into(),
            channel: "console".into(),
            thread: None,
            user: "operator".into(),
            message_id: count.to_string(),
            text: text.to_string(),
        };
        match relay.submit(msg, sink.clone()) {
            Ok(turn) => {
                turn.outcome().await;
            }
            // The busy answer has already been printed through the sink.
            Err(Rejected::Busy) => {}
            Err(Rejected::ShuttingDown) => break,
            Err(Rejected::Unavailable) => {}
        }
    }
    relay.drain(options.grace).await;
    Ok(())
}

async fn write<W: AsyncWrite + Unpin>(out: &Mutex<W>, s: &str) -> std::io::Result<()> {
    let mut out = out.lock().await;
    out.write_all(s.as_bytes()).await?;
    out.flush().await
}
