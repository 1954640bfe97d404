//! Logging set-up with `tracing`: a level filter and a destination that can both be changed at
//! run time (`PUT /logger`).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// A log destination that can be swapped while loggers hold it.
#[derive(Clone)]
struct SwappableWriter(Sink);

/// One write through the shared destination.
struct SinkGuard(Sink);

impl Write for SinkGuard {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

impl<'a> MakeWriter<'a> for SwappableWriter {
    type Writer = SinkGuard;

    fn make_writer(&'a self) -> SinkGuard {
        SinkGuard(self.0.clone())
    }
}

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter did not parse.
    #[error("invalid log level {0:?}: {1}")]
    Level(String, String),
    /// The log file could not be opened.
    #[error("cannot open log file {0}: {1}")]
    Path(String, io::Error),
    /// The subscriber could not be installed or updated.
    #[error("logging: {0}")]
    Setup(String),
}

/// Handle to change the level and destination later.
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
    sink: Sink,
}

impl LogControl {
    /// Installs the global subscriber, logging at `level` to stderr.
    pub fn init(level: &str) -> Result<Self, LogError> {
        let filter =
            EnvFilter::try_new(level).map_err(|e| LogError::Level(level.into(), e.to_string()))?;
        let (filter, handle) = reload::Layer::new(filter);
        let sink: Sink = Arc::new(Mutex::new(Box::new(io::stderr())));
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(SwappableWriter(sink.clone()))
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()));
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init()
            .map_err(|e| LogError::Setup(e.to_string()))?;
        Ok(Self {
            filter: handle,
            sink,
        })
    }

    /// Changes the level filter.
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let f =
            EnvFilter::try_new(level).map_err(|e| LogError::Level(level.into(), e.to_string()))?;
        self.filter
            .reload(f)
            .map_err(|e| LogError::Setup(e.to_string()))
    }

    /// Sends logs to `path`, an existing file (appended to) or FIFO, or back to stderr for `-`.
    /// The file is never created: an API client must not be able to make files appear on the
    /// host (the same rule as Firecracker's logger).
    pub fn set_path(&self, path: &str) -> Result<(), LogError> {
        let w: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stderr())
        } else {
            let meta = std::fs::metadata(path).map_err(|e| LogError::Path(path.into(), e))?;
            if !(meta.is_file() || std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type())) {
                return Err(LogError::Path(
                    path.into(),
                    io::Error::other("not a regular file or FIFO"),
                ));
            }
            Box::new(
                OpenOptions::new()
                    .append(true)
                    .open(Path::new(path))
                    .map_err(|e| LogError::Path(path.into(), e))?,
            )
        };
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = w;
        Ok(())
    }
}
