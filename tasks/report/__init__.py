"""What a run produced, for people: the summary record, the terminal table, the HTML
release report and its chart."""
