//! Tracing: a `job` span per run (with `job` and `job_id`), a `step` span per attempt (with
//! `step`, `attempt` and the enrichment's `fields`) inside it, and the events for a step's start,
//! retry (with `delay` and `error`), failure (with `error`) and completion (with `duration`),
//! captured by a subscriber installed for the test's thread only.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobgraph::{Retry, StepContext, job};
use tokio::time::{sleep, timeout};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(24 * 3600);

type Fields = BTreeMap<String, String>;

/// A span as the layer saw it: its name, fields (recorded later ones included) and parent.
#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    fields: Fields,
    parent: Option<usize>,
}

/// An event: its message, level, other fields, and the span it happened in.
#[derive(Debug, Clone)]
struct EventRec {
    message: String,
    level: Level,
    fields: Fields,
    span: Option<usize>,
}

/// A layer recording every span and event.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<SpanRec>>>,
    events: Arc<Mutex<Vec<EventRec>>>,
}

/// Where a span's record is in `Capture::spans`, kept in the span's extensions.
struct SpanIndex(usize);

/// Records fields as text: strings as they are, the rest by `Debug`.
struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        let span = ctx.span(id).expect("a new span is registered");
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanIndex>().map(|i| i.0));
        let mut spans = self.spans.lock().unwrap();
        spans.push(SpanRec {
            name: attrs.metadata().name(),
            fields,
            parent,
        });
        span.extensions_mut().insert(SpanIndex(spans.len() - 1));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a recorded span is registered");
        let Some(index) = span.extensions().get::<SpanIndex>().map(|i| i.0) else {
            return;
        };
        values.record(&mut Visitor(&mut self.spans.lock().unwrap()[index].fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        let span = ctx
            .event_span(event)
            .and_then(|s| s.extensions().get::<SpanIndex>().map(|i| i.0));
        self.events.lock().unwrap().push(EventRec {
            message: fields.remove("message").unwrap_or_default(),
            level: *event.metadata().level(),
            fields,
            span,
        });
    }
}

impl Capture {
    fn spans(&self) -> Vec<SpanRec> {
        self.spans.lock().unwrap().clone()
    }

    /// The events jobgraph emitted (those in a `step` or `job` span), with their span.
    fn step_events(&self) -> Vec<(EventRec, SpanRec)> {
        let spans = self.spans();
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e.clone(), spans[e.span?].clone())))
            .collect()
    }
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("flaky ({0})")]
struct Flaky(u32);

/// Adds a span field before every attempt.
fn tenant(ctx: &mut StepContext) {
    ctx.record("tenant", "acme");
}

/// `flaky` fails once and is retried; `broken` then fails for good.
struct Traced;

#[job(name = "traced", enrich = tenant)]
impl Traced {
    #[step(retry = Retry::fixed(2, Duration::from_millis(10)))]
    async fn flaky(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        sleep(Duration::from_millis(5)).await;
        match ctx.attempt() {
            1 => Err(Flaky(1)),
            n => Ok(n),
        }
    }

    #[step]
    async fn broken(&self, flaky: &u32) -> Result<u32, Flaky> {
        Err(Flaky(*flaky))
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_span_per_run_and_a_step_span_per_attempt() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let err = timeout(
        HANG,
        Traced
            .runner()
            .job_id("t-1")
            .enrich(|ctx| ctx.record("try", ctx.attempt()))
            .run(),
    )
    .await
    .expect("run hung")
    .unwrap_err();
    assert_eq!(err.step(), TracedStep::Broken);

    let spans = capture.spans();
    let jobs: Vec<_> = spans.iter().filter(|s| s.name == "job").collect();
    assert_eq!(jobs.len(), 1, "{spans:#?}");
    assert_eq!(
        jobs[0].fields,
        fields(&[("job", "traced"), ("job_id", "t-1")])
    );
    let job_index = spans.iter().position(|s| s.name == "job").unwrap();

    let steps: Vec<_> = spans.iter().filter(|s| s.name == "step").collect();
    let expected = [("flaky", "1"), ("flaky", "2"), ("broken", "1")].map(|(step, attempt)| {
        fields(&[
            ("step", step),
            ("attempt", attempt),
            ("fields", &format!("tenant=acme try={attempt}")),
        ])
    });
    assert_eq!(
        steps.iter().map(|s| s.fields.clone()).collect::<Vec<_>>(),
        expected,
        "{spans:#?}"
    );
    assert!(
        steps.iter().all(|s| s.parent == Some(job_index)),
        "every step span is inside the job span: {spans:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn events_for_start_retry_failure_and_completion() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let _ = timeout(HANG, Traced.run()).await.expect("run hung");

    let events = capture.step_events();
    let summary: Vec<(&str, Level, &str, &str)> = events
        .iter()
        .map(|(e, span)| {
            (
                e.message.as_str(),
                e.level,
                span.fields.get("step").map_or("", String::as_str),
                span.fields.get("attempt").map_or("", String::as_str),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("step started", Level::DEBUG, "flaky", "1"),
            ("step attempt failed; retrying", Level::WARN, "flaky", "1"),
            ("step started", Level::DEBUG, "flaky", "2"),
            ("step completed", Level::INFO, "flaky", "2"),
            ("step started", Level::DEBUG, "broken", "1"),
            ("step failed", Level::ERROR, "broken", "1"),
        ],
        "{events:#?}"
    );
    let event = |message: &str| {
        &events
            .iter()
            .find(|(e, _)| e.message == message)
            .unwrap_or_else(|| panic!("no event {message}"))
            .0
    };
    assert_eq!(
        event("step attempt failed; retrying").fields,
        fields(&[("delay", "10ms"), ("error", "returned an error: flaky (1)"),])
    );
    let completed = &event("step completed").fields;
    assert_eq!(completed.get("attempts").map(String::as_str), Some("2"));
    assert!(completed.contains_key("duration"), "{completed:?}");
    assert_eq!(
        event("step failed").fields,
        fields(&[("error", "returned an error: flaky (2)"), ("attempts", "1")])
    );
}

#[tokio::test(start_paused = true)]
async fn the_completed_duration_follows_tokios_clock() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let _ = timeout(HANG, Traced.run()).await.expect("run hung");
    let events = capture.step_events();
    let completed = events
        .iter()
        .find(|(e, _)| e.message == "step completed")
        .expect("flaky completed");
    // 5ms of work, 10ms of back-off, 5ms of work.
    assert_eq!(completed.0.fields["duration"], "20ms");
}

/// `slow` runs while `fails` fails under fail-fast.
struct Cancelled;

#[job]
impl Cancelled {
    #[step]
    async fn slow(&self) -> u32 {
        sleep(Duration::from_secs(3600)).await;
        1
    }

    #[step]
    async fn fails(&self) -> Result<u32, Flaky> {
        Err(Flaky(0))
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_step_is_traced_and_a_span_without_enrichment_has_no_fields() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let _ = timeout(HANG, Cancelled.runner().fail_fast().run())
        .await
        .expect("run hung");
    let events = capture.step_events();
    let cancelled: Vec<_> = events
        .iter()
        .filter(|(e, _)| e.message == "step cancelled")
        .map(|(e, _)| e.fields.clone())
        .collect();
    assert_eq!(cancelled, [fields(&[("step", "slow")])], "{events:#?}");
    let spans = capture.spans();
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "step")
            .all(|s| !s.fields.contains_key("fields")),
        "{spans:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_started_run_has_its_job_span_with_the_handles_id() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let handle = Traced.start();
    let id = handle.id().to_owned();
    let _ = timeout(HANG, handle.wait()).await.expect("wait hung");
    let spans = capture.spans();
    let jobs: Vec<_> = spans.iter().filter(|s| s.name == "job").collect();
    assert_eq!(jobs.len(), 1, "{spans:#?}");
    assert_eq!(
        jobs[0].fields,
        fields(&[("job", "traced"), ("job_id", id.as_str())])
    );
    assert_eq!(spans.iter().filter(|s| s.name == "step").count(), 3);
}
