//! End-to-end harness for the `lmas` binaries (being written).
