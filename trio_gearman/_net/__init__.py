"""The framed Gearman stream over AnyIO, and connecting with time-outs."""
