//! Unit tests of the Prefect plane against a tiny fake of Prefect's API.
