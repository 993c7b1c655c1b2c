"""Factual recall: simple facts whose subject is the evidence ("The capital of France is the city of" -> " Paris")."""

from __future__ import annotations

import random
from collections.abc import Iterator

from .item import Item

#: (prompt template with {} for the subject, "subject: answer; ...") per relation.
RELATIONS = {
    "capital": (
        "The capital of {} is the city of",
        (
            "France: Paris; Germany: Berlin; Italy: Rome; Spain: Madrid; Japan: Tokyo; China: Beijing; Russia: Moscow; "
            "England: London; Egypt: Cairo; Greece: Athens; Portugal: Lisbon; Austria: Vienna; Poland: Warsaw; "
            "Norway: Oslo; Sweden: Stockholm; Finland: Helsinki; Denmark: Copenhagen; Ireland: Dublin; "
            "Hungary: Budapest; Turkey: Ankara; Kenya: Nairobi; Canada: Ottawa; Australia: Canberra; Thailand: Bangkok; "
            "Peru: Lima; Cuba: Havana; Argentina: Buenos Aires; Iran: Tehran; Iraq: Baghdad; Syria: Damascus; "
            "Belgium: Brussels; the Netherlands: Amsterdam; Switzerland: Bern; Chile: Santiago; Venezuela: Caracas; "
            "Indonesia: Jakarta; the Philippines: Manila; Romania: Bucharest; Bulgaria: Sofia; Serbia: Belgrade; "
            "Croatia: Zagreb; Scotland: Edinburgh; Wales: Cardiff; South Korea: Seoul; Israel: Jerusalem; "
            "Lebanon: Beirut; Jordan: Amman; Afghanistan: Kabul; Nepal: Kathmandu; Iceland: Reykjavik; "
            "the Czech Republic: Prague; Slovakia: Bratislava; Estonia: Tallinn; Latvia: Riga; Senegal: Dakar; "
            "Uganda: Kampala; Qatar: Doha; Malaysia: Kuala Lumpur; Singapore: Singapore; Bangladesh: Dhaka; "
            "Sri Lanka: Colombo; Algeria: Algiers; Tunisia: Tunis; Sudan: Khartoum; Uruguay: Montevideo; "
            "Ecuador: Quito; Jamaica: Kingston; Mexico: Mexico City; Colombia: Bogota; Ethiopia: Addis Ababa"
        ),
    ),
    "continent": (
        "The country {} is located on the continent of",
        (
            "France: Europe; Germany: Europe; Italy: Europe; Spain: Europe; Poland: Europe; Sweden: Europe; "
            "Norway: Europe; Greece: Europe; Portugal: Europe; Austria: Europe; Hungary: Europe; Ireland: Europe; "
            "Japan: Asia; China: Asia; India: Asia; Thailand: Asia; Vietnam: Asia; Indonesia: Asia; Nepal: Asia; "
            "Mongolia: Asia; Pakistan: Asia; Malaysia: Asia; Kenya: Africa; Nigeria: Africa; Egypt: Africa; "
            "Ethiopia: Africa; Ghana: Africa; Senegal: Africa; Morocco: Africa; Uganda: Africa; Tanzania: Africa; "
            "Zambia: Africa; Angola: Africa; Mali: Africa; Brazil: South America; Argentina: South America; "
            "Peru: South America; Chile: South America; Colombia: South America; Bolivia: South America; "
            "Paraguay: South America; Canada: North America; Mexico: North America; Australia: Australia"
        ),
    ),
    "language": (
        "The main language spoken in {} is",
        (
            "France: French; Germany: German; Italy: Italian; Spain: Spanish; Japan: Japanese; China: Chinese; "
            "Russia: Russian; Greece: Greek; Portugal: Portuguese; Poland: Polish; Sweden: Swedish; "
            "Norway: Norwegian; Finland: Finnish; Denmark: Danish; Hungary: Hungarian; Turkey: Turkish; "
            "Brazil: Portuguese; Mexico: Spanish; Egypt: Arabic; the Netherlands: Dutch; Korea: Korean; "
            "Vietnam: Vietnamese; Thailand: Thai; Israel: Hebrew; Iran: Persian; Ukraine: Ukrainian; "
            "Romania: Romanian; Argentina: Spanish; England: English; Austria: German; Indonesia: Indonesian"
        ),
    ),
    "landmark": (
        "Many people travel to see {}, which is in the city of",
        (
            "the Eiffel Tower: Paris; the Colosseum: Rome; the Statue of Liberty: New York; "
            "the Brandenburg Gate: Berlin; the Kremlin: Moscow; the Acropolis: Athens; the Sagrada Familia: Barcelona; "
            "the Golden Gate Bridge: San Francisco; the Taj Mahal: Agra; "
            "the Louvre: Paris; the Vatican: Rome; the Sydney Opera House: Sydney; Times Square: New York; "
            "the White House: Washington; the Hollywood sign: Los Angeles; the Parthenon: Athens; "
            "the Prado Museum: Madrid; the Rijksmuseum: Amsterdam; the Burj Khalifa: Dubai; "
            "the Empire State Building: New York; Hagia Sophia: Istanbul; the Pantheon: Rome; the Reichstag: Berlin; "
            "Tiananmen Square: Beijing; the Grand Bazaar: Istanbul; "
            "Big Ben: London; the Spanish Steps: Rome; the Space Needle: Seattle"
        ),
    ),
    "opposite": (
        "The opposite of {} is",
        (
            "hot: cold; up: down; big: small; day: night; black: white; left: right; good: bad; happy: sad; "
            "fast: slow; open: closed; light: dark; rich: poor; early: late; wet: dry; love: hate; in: out; yes: no; "
            "win: lose; true: false; tall: short; thick: thin; strong: weak; loud: quiet; full: empty; first: last; "
            "top: bottom; north: south; east: west; push: pull; buy: sell; question: answer; inside: outside; "
            "always: never; alive: dead; male: female; positive: negative; maximum: minimum; heavy: light; "
            "beginning: end; success: failure; war: peace; friend: enemy; noisy: quiet; sweet: sour; hard: soft"
        ),
    ),
    "young": (
        "The young of a {} is called a",
        (
            "dog: puppy; cat: kitten; cow: calf; sheep: lamb; horse: foal; duck: duckling; frog: tadpole; "
            "kangaroo: joey; bear: cub; lion: cub; deer: fawn; pig: piglet; goose: gosling; owl: owlet; swan: cygnet; "
            "tiger: cub; goat: kid; eagle: eaglet"
        ),
    ),
    "next_day": (
        "Yesterday was {}, so today is",
        (
            "Monday: Tuesday; Tuesday: Wednesday; Wednesday: Thursday; Thursday: Friday; Friday: Saturday; "
            "Saturday: Sunday; Sunday: Monday"
        ),
    ),
    "next_month": (
        "After the month of {} comes the month of",
        (
            "January: February; February: March; March: April; April: May; May: June; June: July; July: August; "
            "August: September; September: October; October: November; November: December; December: January"
        ),
    ),
    "sport": (
        "The athlete {} is famous for playing the sport of",
        (
            "Michael Jordan: basketball; LeBron James: basketball; Kobe Bryant: basketball; Lionel Messi: soccer; "
            "Cristiano Ronaldo: soccer; Roger Federer: tennis; Serena Williams: tennis; Rafael Nadal: tennis; "
            "Tiger Woods: golf; Tom Brady: football; Babe Ruth: baseball; Wayne Gretzky: hockey"
        ),
    ),
    "color": (
        "The usual color of {} is",
        (
            "the sky: blue; grass: green; snow: white; coal: black; a banana: yellow; blood: red; milk: white; "
            "a lemon: yellow; the ocean: blue; a tomato: red; chocolate: brown"
        ),
    ),
}


def candidates(seed: int = 0) -> Iterator[Item]:
    """Every fact once, in an order shuffled by ``seed``; the evidence is the subject's name."""
    facts = []
    for relation, (template, table) in RELATIONS.items():
        for entry in table.split("; "):
            subject, answer = entry.split(": ")
            prompt = template.format(subject)
            name = subject.removeprefix("the ")  # the evidence is the name, not its article
            start = prompt.index(name)
            facts.append(
                Item(f"{relation}:{name}", prompt, " " + answer, ((start, start + len(name)),), group=relation)
            )
    random.Random(seed).shuffle(facts)
    yield from facts
