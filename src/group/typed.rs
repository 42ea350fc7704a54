//! Group members that declare the type of the records they read: a member of a typed topic
//! (see [`crate::bus::Schema`]) that declares another type is refused before it reads a
//! record, with [`BusError::SchemaMismatch`](crate::bus::BusError::SchemaMismatch) (in
//! [`GroupError::Bus`]) naming the topic, both schemas and what to do. A topic without a
//! schema takes any declared type.

use super::{GroupError, GroupOptions, Member};
use crate::bus::{Bus, Schema};

impl Member {
    /// Joins `group` on `topic` as [`Member::join`] does, after checking that the topic
    /// takes records of type `T` ([`Topic::check_schema`](crate::bus::Topic::check_schema)):
    /// a refused member never joins, so the group does not rebalance for it.
    ///
    /// # Errors
    /// [`GroupError::Bus`] with [`BusError::SchemaMismatch`](crate::bus::BusError::SchemaMismatch)
    /// when the topic keeps another schema; as [`Member::join`] otherwise.
    ///
    /// # Examples
    /// ```
    /// use shoal::bus::Bus;
    /// use shoal::group::{GroupOptions, Member};
    /// use shoal::log::LogOptions;
    /// use std::time::Duration;
    ///
    /// #[repr(C)]
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    /// struct Reading { sensor: u32, celsius_milli: i32 }
    /// shoal::schema!(Reading { sensor: u32, celsius_milli: i32 });
    ///
    /// let dir = tempfile::tempdir()?;
    /// let bus = Bus::open(dir.path())?;
    /// let topic = bus.topic_or_create_typed::<Reading>("readings", Some(2))?;
    /// let mut producer = topic.producer_typed::<Reading>(LogOptions::default())?;
    /// producer.send(3, &Reading { sensor: 3, celsius_milli: 21_500 })?;
    /// producer.close()?;
    ///
    /// let mut member = Member::join_typed::<Reading>(&bus, "dashboard", "readings", GroupOptions::default())?;
    /// let batch = member.poll(10, Duration::from_secs(5))?;
    /// assert_eq!(batch[0].record.payload_as::<Reading>()?.celsius_milli, 21_500);
    /// member.leave()?;
    ///
    /// // A member expecting another type of the same size is refused, and does not join.
    /// #[repr(C)]
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    /// struct Counter { value: u64 }
    /// shoal::schema!(Counter { value: u64 });
    /// let refused = Member::join_typed::<Counter>(&bus, "dashboard", "readings", GroupOptions::default());
    /// assert!(refused.unwrap_err().to_string().contains("Counter"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join_typed<T: Schema>(
        bus: &Bus,
        group: &str,
        topic: &str,
        opts: GroupOptions,
    ) -> Result<Member, GroupError> {
        bus.group_dir(group)?;
        bus.topic(topic)?.check_schema::<T>()?;
        Member::join(bus, group, topic, opts)
    }

    /// Checks that this member's topic takes records of type `T` (for a member that joined
    /// with [`Member::join`]).
    ///
    /// # Errors
    /// [`GroupError::Bus`] with [`BusError::SchemaMismatch`](crate::bus::BusError::SchemaMismatch)
    /// when the topic keeps another schema.
    pub fn expect_schema<T: Schema>(&self) -> Result<(), GroupError> {
        Ok(self.topic().check_schema::<T>()?)
    }
}
