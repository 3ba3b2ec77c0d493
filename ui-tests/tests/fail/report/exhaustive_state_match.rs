// `StepState` and `StepEvent` are `#[non_exhaustive]`: the durable phase adds states, so a match
// on them outside jobgraph needs a wildcard arm.

use jobgraph::{StepEvent, StepState};

fn colour(state: StepState) -> &'static str {
    match state {
        StepState::Pending => "white",
        StepState::Running => "gold",
        StepState::Completed => "green",
        StepState::Failed => "red",
        StepState::Skipped => "grey",
        StepState::Cancelled => "orange",
    }
}

fn describe<S>(event: &StepEvent<'_, S>) -> &'static str {
    match event {
        StepEvent::Started { .. } => "started",
        StepEvent::Retrying { .. } => "retrying",
        StepEvent::Completed { .. } => "completed",
        StepEvent::Failed { .. } => "failed",
        StepEvent::Skipped { .. } => "skipped",
        StepEvent::Cancelled { .. } => "cancelled",
    }
}

fn main() {
    let _ = colour(StepState::Pending);
    let _ = describe::<u8>;
}
