use super::*;

fn end<'a>(ending: Ending, message: &'a str, logs: &'a [TailLine]) -> RunEnd<'a> {
    RunEnd {
        ending,
        message,
        logs,
    }
}

fn stderr(lines: &str) -> Vec<TailLine> {
    lines
        .lines()
        .map(|l| TailLine::new(LogStream::Stderr, l))
        .collect()
}

/// A real CPython 3.12 traceback, as a job prints it to stderr.
const TRACEBACK: &str = r#"Traceback (most recent call last):
  File "/app/flow.py", line 12, in <module>
    main()
  File "/app/flow.py", line 9, in main
    raise ValueError("bad input: row 3")
ValueError: bad input: row 3"#;

#[test]
fn a_python_traceback_gives_user_code_error_with_its_last_line_and_the_exit_code() {
    let logs = stderr(TRACEBACK);
    let s = common(&end(Ending::Failed, "exit code 1", &logs));
    assert_eq!(s.cause, Cause::UserCodeError);
    assert_eq!(s.explanation, "the job's Python code raised ValueError");
    assert_eq!(
        s.evidence,
        vec!["ValueError: bad input: row 3", "exit code 1"]
    );
}

#[test]
fn the_last_of_several_tracebacks_wins_and_chained_ones_keep_their_module_path() {
    let text = format!(
        "{TRACEBACK}\n\nDuring handling of the above exception, another exception occurred:\n\n\
         Traceback (most recent call last):\n  File \"/app/flow.py\", line 14, in <module>\n    \
         requests.get(url)\nrequests.exceptions.ConnectionError: HTTPSConnectionPool(host='x', port=443)"
    );
    let (kind, line) = python_exception(text.lines()).unwrap();
    assert_eq!(kind, "ConnectionError");
    assert!(line.starts_with("requests.exceptions.ConnectionError: "));
}

#[test]
fn a_memory_error_traceback_is_out_of_memory() {
    let logs = stderr("Traceback (most recent call last):\n  File \"/app/x.py\", line 2, in <module>\n    b = bytearray(10**12)\nMemoryError");
    let s = common(&end(Ending::Failed, "exit code 1", &logs));
    assert_eq!(s.cause, Cause::OutOfMemory);
    assert_eq!(s.evidence[0], "MemoryError");
}

#[test]
fn a_plain_exit_code_is_user_code_error_with_the_last_stderr_line() {
    let logs = vec![
        TailLine::new(LogStream::Stdout, "loading 3 files"),
        TailLine::new(
            LogStream::Stderr,
            "cp: cannot stat 'in.csv': No such file or directory",
        ),
        TailLine::new(LogStream::System, "pushpool sandbox: landlock ABI 7"),
    ];
    let s = common(&end(Ending::Failed, "exit code 3", &logs));
    assert_eq!(s.cause, Cause::UserCodeError);
    assert_eq!(
        s.evidence,
        vec![
            "exit code 3",
            "cp: cannot stat 'in.csv': No such file or directory"
        ]
    );
}

#[test]
fn a_signal_names_the_signal() {
    let s = common(&end(Ending::Crashed, "killed by signal SIGKILL", &[]));
    assert_eq!(s.cause, Cause::Unknown);
    assert!(s.explanation.contains("SIGKILL"), "{s:?}");
    assert_eq!(s.evidence[0], "signal 9 (SIGKILL)");
    let s = common(&end(Ending::Failed, "exit code 143", &[]));
    assert_eq!(s.evidence[0], "exit code 143 (SIGTERM)");
    assert_eq!(signal("Container terminated on signal 9."), Some(9));
    assert_eq!(signal("Runtime exited with error: signal: killed"), Some(9));
}

#[test]
fn exit_codes_are_read_in_the_shapes_providers_print() {
    assert_eq!(exit_code("exit code 3"), Some(3));
    assert_eq!(exit_code("Container called exit(1)."), Some(1));
    assert_eq!(
        exit_code("Runtime exited with error: exit status 2"),
        Some(2)
    );
    assert_eq!(
        exit_code("The container exited with an exit code of 137"),
        Some(137)
    );
    assert_eq!(exit_code("finished"), None);
    assert_eq!(describe_exit(137), "exit code 137 (SIGKILL)");
}

#[test]
fn status_messages_map_to_causes() {
    let cases = [
        ("lost contact with the `aws-lambda:push` provider for 300s while watching `x`; last error: dispatch failure", Cause::InfrastructureLost),
        ("infrastructure `x` no longer exists at the `process` provider (removed outside pushpool, or lost with a controller restart); the job's outcome is unknown", Cause::InfrastructureLost),
        ("submitting to the `aws-lambda:push` provider kept failing for 60s, the last error: TooManyRequestsException: Rate Exceeded.", Cause::Throttled),
        ("submitting to the `cloud-run-v2:push` provider failed: HTTP 403 PERMISSION_DENIED: Permission 'run.jobs.create' denied on resource", Cause::PermissionDenied),
        ("the `aws-lambda:push` provider rejected the job configuration at `payload`: the rendered payload is 7000000 bytes", Cause::InvalidConfiguration),
        ("invoking Lambda function `etl` failed: ResourceNotFoundException: Function not found: arn:aws:lambda:us-east-1:123456789012:function:etl", Cause::NotFound),
        ("Task etl-abc-task0 failed with message: The configured timeout was reached.", Cause::Timeout),
        ("Memory limit of 512 MiB exceeded with 530 MiB used. Consider increasing the memory limit, see https://cloud.google.com/run/docs/configuring/memory-limits", Cause::OutOfMemory),
        ("The execution was cancelled.", Cause::CancelledByProvider),
        ("something odd", Cause::Unknown),
    ];
    for (message, cause) in cases {
        let s = common(&end(Ending::Crashed, message, &[]));
        assert_eq!(s.cause, cause, "{message}");
        assert_eq!(s.evidence[0], one_line(message, MAX_EVIDENCE_CHARS));
    }
}

#[test]
fn a_timeout_line_in_the_logs_is_a_timeout() {
    let logs = vec![TailLine::new(
        LogStream::Provider,
        "2026-12-01T21:00:03.512Z 7c1e9a4e-5d1b-4a8e-9d55-0f4f8e0a1b2c Task timed out after 3.00 seconds",
    )];
    let s = common(&end(Ending::Failed, "exit status 1", &logs));
    assert_eq!(s.cause, Cause::Timeout);
}

#[test]
fn evidence_is_bounded_one_line_and_without_repeats() {
    let long = "x".repeat(1000);
    let s = ErrorSummary::new(Cause::Unknown, "a\nb")
        .with_evidence(&long)
        .with_evidence(&long)
        .with_evidence("")
        .with_evidence("1")
        .with_evidence("2")
        .with_evidence("3")
        .with_evidence("4");
    assert_eq!(s.explanation, "a b");
    assert_eq!(s.evidence.len(), MAX_EVIDENCE);
    assert_eq!(s.evidence[0].chars().count(), MAX_EVIDENCE_CHARS);
    assert!(s.evidence[0].ends_with('…'));
}

#[test]
fn causes_have_stable_names() {
    let names: Vec<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "timeout",
            "out_of_memory",
            "permission_denied",
            "not_found",
            "throttled",
            "invalid_configuration",
            "user_code_error",
            "infrastructure_lost",
            "cancelled_by_provider",
            "unknown"
        ]
    );
    for c in Cause::ALL {
        assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
    }
}
