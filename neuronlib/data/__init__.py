"""Datasets the paper uses: subject-verb agreement, capitals, an offline text corpus."""
