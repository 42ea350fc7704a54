//! Event sourcing on the durable log: append account events with group commit, wait until
//! each batch is durable before acknowledging it, then rebuild the balances by replaying the
//! log in place. Run with `cargo run --release --example event_sourcing`.

use shoal::log::{Appender, Durability, LogOptions, Reader};

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Deposit {
    account: u64,
    cents: i64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut log = Appender::open(dir.path(), LogOptions::default().durability(Durability::Batch))?;
    let mut expected = vec![0i64; 16];
    for batch in 0..100u64 {
        let mut last = None;
        for i in 0..1000u64 {
            let event = Deposit { account: (batch * 7 + i) % 16, cents: (i as i64 % 50) - 10 };
            expected[event.account as usize] += event.cents;
            last = Some(log.append_pod(event.account, &event)?);
        }
        if let Some(offset) = last {
            log.wait_durable(offset, None)?; // acknowledge the batch only once it is on disk
        }
    }
    log.close()?;

    let mut balances = vec![0i64; 16];
    let mut reader = Reader::open(dir.path())?;
    let mut events = 0;
    while let Some(record) = reader.next()? {
        let deposit: &Deposit = record.payload_as()?; // read in place, no copy
        balances[deposit.account as usize] += deposit.cents;
        events += 1;
    }
    assert_eq!(balances, expected);
    println!("replayed {events} events; balances match: {balances:?}");
    Ok(())
}
