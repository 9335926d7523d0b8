"""The side effects: files, Postfix, DNS and the STARTTLS probe.

Each module here does one kind of I/O and nothing else; deciding what to do
is the planner's job (`danesync.plan`).
"""
