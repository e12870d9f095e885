//! Real-time scheduling for the control thread. Failure detection runs on timers of a few
//! milliseconds (heartbeat × multiplier); on a shared, loaded machine a normal-priority thread
//! can wait longer than that for a CPU, and a healthy peer would then be declared dead. BFD
//! implementations run their timers at real-time priority for the same reason. The control
//! loop sleeps on every iteration, so SCHED_FIFO cannot starve the machine.
#![allow(unsafe_code)]

use std::io;

/// Puts the calling thread under SCHED_FIFO at `priority` (1..=99). Needs CAP_SYS_NICE.
pub fn set_realtime(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority.clamp(1, 99)),
    };
    // SAFETY: `param` is a valid sched_param; pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
