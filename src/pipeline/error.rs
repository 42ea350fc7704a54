//! The pipeline's one error enum (cold path: build, scale, shutdown).

use std::io;
use std::path::PathBuf;

use crate::log::LogError;

/// Why building, scaling, joining or shutting down a pipeline failed.
///
/// Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// No stage has this name.
    #[error("no stage named {name:?}; the stages are {known:?}")]
    UnknownStage {
        /// The name asked for.
        name: String,
        /// The stages the pipeline has, in order.
        known: Vec<String>,
    },
    /// A stage was given 0 workers (or a sink more than it supports).
    #[error("stage {stage:?} cannot run {workers} workers: it needs at least 1 and at most {max}")]
    InvalidWorkers {
        /// The stage.
        stage: String,
        /// Workers asked for.
        workers: usize,
        /// Most workers the stage supports (1 for a log appender sink, which is single-writer).
        max: usize,
    },
    /// A builder setting is out of range.
    #[error("invalid pipeline setting: {0}")]
    Config(String),
    /// The builder has no source.
    #[error("the pipeline has no source; call .source(name, Source) before .build()")]
    NoSource,
    /// The builder has no stage.
    #[error("the pipeline has no stage; add at least one with .stage(..) or .sink(..)")]
    NoStages,
    /// Two stages (or the source and a stage) share a name.
    #[error("the name {name:?} is used twice; give every stage and the source its own name")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A handler, a handler factory or the source panicked; the whole pipeline stopped.
    #[error(
        "stage {stage:?} worker {worker} panicked: {message}; the pipeline stopped (events in flight were dropped)"
    )]
    Panicked {
        /// The stage (or source) name.
        stage: String,
        /// The worker's index in its stage (0 for the source).
        worker: usize,
        /// The panic message.
        message: String,
    },
    /// The source failed (for example a log reader met corruption); the pipeline stopped.
    #[error("source {name:?} failed: {message}; the pipeline stopped")]
    SourceFailed {
        /// The source's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A sink failed (an append or the final sync of its log or topic met an I/O error);
    /// the pipeline stopped.
    #[error("sink {stage:?} failed: {message}; the pipeline stopped")]
    SinkFailed {
        /// The sink's stage name.
        stage: String,
        /// What went wrong.
        message: String,
    },
    /// A worker thread could not be started.
    #[error("could not start thread {thread:?}: {error}; lower the worker count or raise the thread limit")]
    Spawn {
        /// The thread's name.
        thread: String,
        /// The OS error.
        #[source]
        error: io::Error,
    },
    /// [`Pinning::Strict`](super::Pinning::Strict) and more threads to pin than free CPUs.
    #[error(
        "strict pinning: {threads} threads to pin (the source and the workers, or the workers a scale adds) but \
         {free} of the {cpus} allowed CPUs are free; use fewer workers, Pinning::Spread to let threads share CPUs, \
         or pin(false)"
    )]
    Oversubscribed {
        /// Threads to pin.
        threads: usize,
        /// CPUs the process may use ([`crate::affinity::allowed_cpus`]).
        cpus: usize,
        /// Of those, CPUs with no pinned thread of any pipeline.
        free: usize,
    },
    /// A log used as a source or sink could not be opened.
    #[error("log {path}: {error}")]
    Log {
        /// The log directory.
        path: PathBuf,
        /// The log's error.
        #[source]
        error: LogError,
    },
    /// The pipeline has stopped, and no error stopped it (one that did is reported by every
    /// call after it instead).
    #[error("the pipeline has already stopped; build a new one")]
    AlreadyStopped,
}
