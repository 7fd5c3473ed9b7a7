"""What a dashboard knows about one run, read from its run directory in bounded memory.

    store      `MetricsStore`: tails the run's files, keeps every series, raises alerts
    reading    offset tails of the JSONL and text logs; big files as a sample plus a tail
    series     `Series` (bounded min/max history) and `lttb` downsampling for charts
    records    `Event`, `GpuHistory` and the parsing of raw record fields
    progress   `Progress` and the `Pace` behind the ETA and the stall threshold
    alerts     `Alert`, the spike detector and the text of every alert
    preference a DPO-family run's reward series and its margin and accuracy alerts

Import from the module that holds a name; this package re-exports nothing.
"""
