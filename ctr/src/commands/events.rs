//! `berth events [FILTER...]`: one line per event until interrupted.

use berth_proto::containerd::services::events::v1::SubscribeRequest;
use berth_proto::containerd::types::Envelope;
use serde_json::{json, Value};

use crate::error::CallExt;
use crate::event_types;
use crate::output::{self, Format};
use crate::{client, Global};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Filters, e.g. 'topic~=|^/tasks/|' or 'namespace==default'; an event passes if it
    /// matches any of them.
    filters: Vec<String>,
}

pub async fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let conn = client::connect(g).await?;
    let mut stream = conn
        .events()
        .subscribe(SubscribeRequest {
            filters: args.filters,
        })
        .await
        .ctx("events")?
        .into_inner();
    while let Some(envelope) = stream.message().await.ctx("events")? {
        match g.format {
            Format::Table => output::line(text_line(&envelope))?,
            Format::Json => output::json_line(&json_line(&envelope))?,
        }
    }
    // A subscription only ends when the daemon goes away (shutdown, restart).
    anyhow::bail!("events: berthd ended the event stream")
}

/// `TIMESTAMP NAMESPACE TOPIC EVENT`
fn text_line(env: &Envelope) -> String {
    let event = match &env.event {
        None => "-".to_string(),
        Some(any) => match event_types::decode(any) {
            Ok(v) => v.to_string(),
            Err(why) => format!("<{why}>"),
        },
    };
    let namespace = if env.namespace.is_empty() {
        "-"
    } else {
        &env.namespace
    };
    format!(
        "{} {} {} {}",
        output::timestamp(env.timestamp.as_ref()),
        namespace,
        env.topic,
        event
    )
}

fn json_line(env: &Envelope) -> Value {
    let (kind, event, error) = match &env.event {
        None => (Value::Null, Value::Null, Value::Null),
        Some(any) => {
            let kind = Value::String(event_types::type_name(&any.type_url).to_string());
            match event_types::decode(any) {
                Ok(v) => (kind, v, Value::Null),
                Err(why) => (kind, Value::Null, Value::String(why)),
            }
        }
    };
    let mut obj = json!({
        "timestamp": output::timestamp_json(env.timestamp.as_ref()),
        "namespace": env.namespace,
        "topic": env.topic,
        "type": kind,
        "event": event,
    });
    if !error.is_null() {
        obj["error"] = error;
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::containerd::events::ContentDelete;
    use prost::{Message, Name};

    fn envelope() -> Envelope {
        Envelope {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            namespace: "default".into(),
            topic: "/content/delete".into(),
            event: Some(prost_types::Any {
                type_url: ContentDelete::full_name(),
                value: ContentDelete {
                    digest: "sha256:ab".into(),
                }
                .encode_to_vec(),
            }),
        }
    }

    #[test]
    fn formats_text_lines() {
        assert_eq!(
            text_line(&envelope()),
            r#"2023-11-14T22:13:20.005Z default /content/delete {"digest":"sha256:ab"}"#
        );
    }

    #[test]
    fn formats_json_lines() {
        assert_eq!(
            json_line(&envelope()).to_string(),
            r#"{"event":{"digest":"sha256:ab"},"namespace":"default","timestamp":"2023-11-14T22:13:20.005Z","topic":"/content/delete","type":"containerd.events.ContentDelete"}"#
        );
    }
}
