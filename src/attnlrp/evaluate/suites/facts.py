"""Factual recall: simple facts whose subject is the evidence ("The capital of France is the city of" -> " Paris")."""

from __future__ import annotations

import random
from collections.abc import Iterator

from .item import Item

#: (prompt template with {} for the subject, "subject: answer; ...") per relation.
RELATIONS = {
    "capital": ("The capital of {} is the city of", (
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
        "Ecuador: Quito; Jamaica: Kingston; Mexico: Mexico City; Colombia: Bogota; Ethiopia: Addis Ababa")),
    "continent": ("{} is a country on the continent of", (
        "France: Europe; Germany: Europe; Italy: Europe; Spain: Europe; Poland: Europe; Sweden: Europe; "
        "Norway: Europe; Greece: Europe; Portugal: Europe; Austria: Europe; Hungary: Europe; Ireland: Europe; "
        "Japan: Asia; China: Asia; India: Asia; Thailand: Asia; Vietnam: Asia; Indonesia: Asia; Nepal: Asia; "
        "Mongolia: Asia; Pakistan: Asia; Malaysia: Asia; Kenya: Africa; Nigeria: Africa; Egypt: Africa; "
        "Ethiopia: Africa; Ghana: Africa; Senegal: Africa; Morocco: Africa; Uganda: Africa; Tanzania: Africa; "
        "Zambia: Africa; Angola: Africa; Mali: Africa; Brazil: South America; Argentina: South America; "
        "Peru: South America; Chile: South America; Colombia: South America; Bolivia: South America; "
        "Paraguay: South America; Canada: North America; Mexico: North America; Australia: Australia")),
    "language": ("People in {} speak", (
        "France: French; Germany: German; Italy: Italian; Spain: Spanish; Japan: Japanese; China: Chinese; "
        "Russia: Russian; Greece: Greek; Portugal: Portuguese; Poland: Polish; Sweden: Swedish; "
        "Norway: Norwegian; Finland: Finnish; Denmark: Danish; Hungary: Hungarian; Turkey: Turkish; "
        "Brazil: Portuguese; Mexico: Spanish; Egypt: Arabic; the Netherlands: Dutch; Korea: Korean; "
        "Vietnam: Vietnamese; Thailand: Thai; Israel: Hebrew; Iran: Persian; Ukraine: Ukrainian; "
        "Romania: Romanian; Argentina: Spanish; England: English; Austria: German; Indonesia: Indonesian")),
    "landmark": ("{} is located in the city of", (
        "The Eiffel Tower: Paris; The Colosseum: Rome; The Statue of Liberty: New York; "
        "The Brandenburg Gate: Berlin; The Kremlin: Moscow; The Acropolis: Athens; The Sagrada Familia: Barcelona; "
        "The Golden Gate Bridge: San Francisco; The Taj Mahal: Agra; The Tower of London: London; "
        "The Louvre: Paris; The Vatican: Rome; The Sydney Opera House: Sydney; Times Square: New York; "
        "The White House: Washington; The Hollywood sign: Los Angeles; The Parthenon: Athens; "
        "The Prado Museum: Madrid; The Rijksmuseum: Amsterdam; The Burj Khalifa: Dubai; "
        "The Empire State Building: New York; Hagia Sophia: Istanbul; The Pantheon: Rome; The Reichstag: Berlin; "
        "Tiananmen Square: Beijing; The Grand Bazaar: Istanbul; The Leaning Tower of Pisa: Pisa; "
        "Big Ben: London; The Spanish Steps: Rome; The Space Needle: Seattle")),
    "opposite": ("The opposite of {} is", (
        "hot: cold; up: down; big: small; day: night; black: white; left: right; good: bad; happy: sad; "
        "fast: slow; open: closed; light: dark; rich: poor; early: late; wet: dry; love: hate; in: out; yes: no; "
        "win: lose; true: false; tall: short; thick: thin; strong: weak; loud: quiet; full: empty; first: last; "
        "top: bottom; north: south; east: west; push: pull; buy: sell; question: answer; inside: outside; "
        "always: never; alive: dead; male: female; positive: negative; maximum: minimum; heavy: light; "
        "beginning: end; success: failure; war: peace; friend: enemy; noisy: quiet; sweet: sour; hard: soft")),
    "young": ("A baby {} is called a", (
        "dog: puppy; cat: kitten; cow: calf; sheep: lamb; horse: foal; duck: duckling; frog: tadpole; "
        "kangaroo: joey; bear: cub; lion: cub; deer: fawn; pig: piglet; goose: gosling; owl: owlet; swan: cygnet; "
        "tiger: cub; goat: kid; eagle: eaglet")),
    "next_day": ("The day after {} is", (
        "Monday: Tuesday; Tuesday: Wednesday; Wednesday: Thursday; Thursday: Friday; Friday: Saturday; "
        "Saturday: Sunday; Sunday: Monday")),
    "next_month": ("The month after {} is", (
        "January: February; February: March; March: April; April: May; May: June; June: July; July: August; "
        "August: September; September: October; October: November; November: December; December: January")),
    "sport": ("{} is famous for playing the sport of", (
        "Michael Jordan: basketball; LeBron James: basketball; Kobe Bryant: basketball; Lionel Messi: soccer; "
        "Cristiano Ronaldo: soccer; Roger Federer: tennis; Serena Williams: tennis; Rafael Nadal: tennis; "
        "Tiger Woods: golf; Tom Brady: football; Babe Ruth: baseball; Wayne Gretzky: hockey")),
    "color": ("The color of {} is", (
        "the sky: blue; grass: green; snow: white; coal: black; a banana: yellow; blood: red; milk: white; "
        "a lemon: yellow; the ocean: blue; a tomato: red; chocolate: brown")),
}


def candidates(seed: int = 0) -> Iterator[Item]:
    """Every fact once, in an order shuffled by ``seed``; the evidence is the subject."""
    facts = []
    for relation, (template, table) in RELATIONS.items():
        for entry in table.split("; "):
            subject, answer = entry.split(": ")
            prompt = template.format(subject)
            start = prompt.index(subject)
            facts.append(Item(f"{relation}:{subject}", prompt, " " + answer, ((start, start + len(subject)),),
                              group=relation))
    random.Random(seed).shuffle(facts)
    yield from facts
