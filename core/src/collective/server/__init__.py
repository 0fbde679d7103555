"""The daemon side: :mod:`.dispatch` (validation, authorization, actions), :mod:`.pool`, :mod:`.daemon`."""
