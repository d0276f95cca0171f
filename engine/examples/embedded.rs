//! ringlog's engine as a library, without the server: open a data directory, create a
//! topic, append record batches, read them back.
//!
//! `cargo run --release -p ringlog-engine --example embedded -- [DATA_DIR]`
//! (default: a new temporary directory). Run it twice on the same directory and the
//! offsets continue where the first run stopped.

use bytes::Bytes;
use ringlog_engine::batch::{BatchBuilder, RecordBatch};
use ringlog_engine::log::Ack;
use ringlog_engine::rt::RuntimeConfig;
use ringlog_engine::shard::{Engine, EngineConfig};
use ringlog_engine::topic::{FlushPolicy, TopicConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temporary = tempfile::tempdir()?;
    let data_dir = std::env::args()
        .nth(1)
        .map_or_else(|| temporary.path().to_path_buf(), Into::into);
    let engine = Engine::open(&EngineConfig {
        data_dir,
        runtime: RuntimeConfig::default(),
        batch_cache_bytes: 64 << 20,
        retention_check_interval: None,
    })?;
    futures::executor::block_on(async {
        if engine.topic("greetings").is_none() {
            let durable = TopicConfig::builder().flush(FlushPolicy::Always).build()?;
            engine.create_topic("greetings", 2, durable).await?;
        }
        let mut builder = BatchBuilder::new();
        for (key, value) in [("en", "hello"), ("fr", "bonjour"), ("de", "hallo")] {
            builder.push(0, Some(key.as_bytes()), Some(value.as_bytes()), &[])?;
        }
        let batch = Bytes::from(builder.build());
        let appended = engine.append("greetings", 0, batch, Ack::Durable).await?;
        println!(
            "appended offsets {}..{}",
            appended.offset_first, appended.offset_next
        );
        let read = engine.read("greetings", 0, 0, 1 << 20).await?;
        let mut rest = &read.bytes[..];
        while let Ok((batch, next)) = RecordBatch::parse(rest) {
            for record in batch.records()? {
                let record = record?;
                let offset = batch.base_offset() + i64::from(record.offset_delta);
                let key = String::from_utf8_lossy(record.key.unwrap_or_default());
                let value = String::from_utf8_lossy(record.value.unwrap_or_default());
                println!("offset {offset}: {key} = {value}");
            }
            rest = next;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    engine.shutdown()?;
    Ok(())
}
